package task

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"oomshim/process"
	"oomshim/runc"
)

// Each package's sentinel reaches containerd with its errdefs code.
func TestToGRPCCodes(t *testing.T) {
	for _, tc := range []struct {
		err error
		is  func(error) bool
	}{
		{process.ErrExited, errdefs.IsNotFound},
		{&process.TransitionError{From: process.Running, To: process.Deleted}, errdefs.IsFailedPrecondition},
		{process.ErrNotStarted, errdefs.IsFailedPrecondition},
		{process.ErrUnsupportedIO, errdefs.IsNotImplemented},
		{process.ErrLogger, errdefs.IsFailedPrecondition},
		{runc.ErrRuntimeNotFound, errdefs.IsFailedPrecondition},
		{runc.ErrInvalidMount, errdefs.IsInvalidArgument},
		{errors.New("anything else"), errdefs.IsUnknown},
	} {
		wrapped := fmt.Errorf("context: %w", tc.err)
		if got := errgrpc.ToNative(toGRPC(wrapped)); !tc.is(got) {
			t.Errorf("%v reached containerd as %v", tc.err, got)
		}
	}
}
