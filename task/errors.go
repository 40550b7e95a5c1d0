package task

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"oomshim/event"
	"oomshim/process"
	"oomshim/runc"
)

// toGRPC maps an error to containerd's errdefs codes at the API edge. Each
// package's sentinels are matched with errors.Is; text is never inspected.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
	case errdefs.IsNotFound(err), errdefs.IsAlreadyExists(err), errdefs.IsInvalidArgument(err),
		errdefs.IsFailedPrecondition(err), errdefs.IsNotImplemented(err), errdefs.IsUnavailable(err):
	case errors.Is(err, process.ErrExited):
		err = fmt.Errorf("process already finished: %w: %w", err, errdefs.ErrNotFound)
	case errors.Is(err, process.ErrInvalidTransition), errors.Is(err, process.ErrNotStarted):
		err = fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	case errors.Is(err, process.ErrUnsupportedIO):
		err = fmt.Errorf("%w: %w", err, errdefs.ErrNotImplemented)
	case errors.Is(err, runc.ErrRuntimeNotFound), errors.Is(err, process.ErrLogger):
		err = fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	case errors.Is(err, runc.ErrInvalidMount):
		err = fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	case errors.Is(err, event.ErrClosed):
		err = fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	return errgrpc.ToGRPC(err)
}

// identifier is containerd's rule for container and exec IDs: alphanumeric
// runs joined by single '.', '_' or '-'. It rules out '/', '..' and empty.
var identifier = regexp.MustCompile(`^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`)

const maxIDLength = 76

// validateID rejects IDs that could escape a directory or a runc root.
func validateID(kind, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s id must not be empty: %w", kind, errdefs.ErrInvalidArgument)
	case len(id) > maxIDLength:
		return fmt.Errorf("%s id %q is longer than %d characters: %w", kind, id, maxIDLength, errdefs.ErrInvalidArgument)
	case !identifier.MatchString(id):
		return fmt.Errorf("%s id %q must match %s: %w", kind, id, identifier, errdefs.ErrInvalidArgument)
	}
	return nil
}
