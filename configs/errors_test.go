package configs

import (
	"errors"
	"strings"
	"testing"
)

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Pos: at(12, 5), Directive: "reverse_proxy", Msg: `unknown subdirective "max_con"`},
			`Roamfile:12:5: reverse_proxy: unknown subdirective "max_con"`},
		{&Error{Pos: at(1, 1), Msg: "no site blocks"}, "Roamfile:1:1: no site blocks"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

func TestJoinErrors(t *testing.T) {
	e := func(line, col int) error { return newError(at(line, col), "", nil, "x") }
	if err := joinErrors(nil); err != nil {
		t.Errorf("joinErrors(nil) = %v", err)
	}
	one := e(1, 1)
	if err := joinErrors([]error{one}); err != one {
		t.Errorf("joinErrors of one = %v, want it unchanged", err)
	}
	err := joinErrors([]error{e(3, 1), e(1, 9), e(1, 2), e(2, 5)})
	want := "Roamfile:1:2: x\nRoamfile:1:9: x\nRoamfile:2:5: x\nRoamfile:3:1: x"
	if err.Error() != want {
		t.Errorf("joinErrors = %q, want file order %q", err, want)
	}
	var first *Error
	if !errors.As(err, &first) || first.Pos != at(1, 2) {
		t.Errorf("errors.As = %v, want the first in file order", first)
	}

	var many []error
	for i := range maxErrors + 3 {
		many = append(many, e(i+1, 1))
	}
	lines := strings.Split(joinErrors(many).Error(), "\n")
	if len(lines) != maxErrors+1 || lines[maxErrors] != "too many errors: 3 more not shown" {
		t.Errorf("capped errors end %q (%d lines)", lines[len(lines)-1], len(lines))
	}
}
