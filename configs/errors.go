package configs

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// maxErrors caps the errors Parse reports for one file.
const maxErrors = 20

// Error is a problem at a place in a Roamfile. It reads
//
//	Roamfile:12:5: reverse_proxy: unknown subdirective "max_con" (did you mean max_conns_per_session?)
//
// Parse returns a single *Error or several joined with errors.Join, in file
// order; errors.As finds the first.
type Error struct {
	Pos Position
	// Directive is the directive being read, such as "reverse_proxy"; empty
	// for errors outside a directive.
	Directive string
	Msg       string
	// Err is the underlying cause, such as a time.ParseDuration error; nil if
	// there is none. Msg already describes it.
	Err error
}

// Error formats the error as "file:line:col: directive: msg".
func (e *Error) Error() string {
	if e.Directive == "" {
		return e.Pos.String() + ": " + e.Msg
	}
	return e.Pos.String() + ": " + e.Directive + ": " + e.Msg
}

// Unwrap returns the cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// newError is the one constructor of *Error: every error of this package
// gets its position here.
func newError(pos Position, directive string, cause error, msg string) *Error {
	return &Error{Pos: pos, Directive: directive, Msg: msg, Err: cause}
}

// joinErrors sorts errs into file order and joins them, keeping the first
// maxErrors and saying how many more there were. It returns a lone error
// as it is and nil for none.
func joinErrors(errs []error) error {
	slices.SortStableFunc(errs, func(a, b error) int {
		var ea, eb *Error
		if !errors.As(a, &ea) || !errors.As(b, &eb) {
			return 0
		}
		return cmp.Or(cmp.Compare(ea.Pos.Line, eb.Pos.Line), cmp.Compare(ea.Pos.Col, eb.Pos.Col))
	})
	switch {
	case len(errs) == 0:
		return nil
	case len(errs) == 1:
		return errs[0]
	case len(errs) > maxErrors:
		more := fmt.Errorf("too many errors: %d more not shown", len(errs)-maxErrors)
		errs = append(errs[:maxErrors:maxErrors], more)
	}
	return errors.Join(errs...)
}
