package process

import (
	"errors"
	"testing"
)

func TestTransitions(t *testing.T) {
	all := []Status{Created, Running, Paused, Stopped, Deleted}
	valid := map[[2]Status]bool{
		{Created, Running}: true,
		{Created, Stopped}: true,
		{Created, Deleted}: true,
		{Running, Paused}:  true,
		{Running, Stopped}: true,
		{Paused, Running}:  true,
		{Paused, Stopped}:  true,
		{Stopped, Deleted}: true,
	}
	for _, from := range all {
		for _, to := range all {
			t.Run(from.String()+"->"+to.String(), func(t *testing.T) {
				err := transition(from, to)
				if valid[[2]Status{from, to}] {
					if err != nil {
						t.Fatalf("want allowed, got %v", err)
					}
					return
				}
				var te *TransitionError
				if !errors.As(err, &te) || te.From != from || te.To != to {
					t.Fatalf("want TransitionError{%s,%s}, got %v", from, to, err)
				}
				if !errors.Is(err, ErrInvalidTransition) {
					t.Fatalf("%v does not wrap ErrInvalidTransition", err)
				}
			})
		}
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{Created: "created", Running: "running", Paused: "paused", Stopped: "stopped", Deleted: "deleted", 0: "status(0)"} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}
