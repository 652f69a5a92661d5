package configs

import (
	"fmt"
	"reflect"
)

// Fingerprint describes v, a value of this package's types, without the
// positions it was written at: two settings with equal fingerprints say
// the same thing, wherever they stand in their files (a reload compares
// what changed with it).
func Fingerprint(v any) string {
	return fmt.Sprintf("%+v", zeroPositions(reflect.ValueOf(v)).Interface())
}

var positionType = reflect.TypeOf(Position{})

// zeroPositions returns a copy of v with every Position zero.
func zeroPositions(v reflect.Value) reflect.Value {
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == positionType {
			return reflect.Zero(positionType)
		}
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		for i := range v.NumField() {
			if c.Field(i).CanSet() {
				c.Field(i).Set(zeroPositions(v.Field(i)))
			}
		}
		return c
	case reflect.Pointer:
		if v.IsNil() {
			return v
		}
		c := reflect.New(v.Type().Elem())
		c.Elem().Set(zeroPositions(v.Elem()))
		return c
	case reflect.Slice:
		if v.IsNil() {
			return v
		}
		c := reflect.MakeSlice(v.Type(), v.Len(), v.Len())
		for i := range v.Len() {
			c.Index(i).Set(zeroPositions(v.Index(i)))
		}
		return c
	}
	return v
}
