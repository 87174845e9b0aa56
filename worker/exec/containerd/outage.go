package containerd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoal-project/shoal/worker/exec"
)

// containerd may restart, or be down for a while, under running tasks:
// each task's shim keeps its process running and holds its exit status,
// and containerd finds the shims again when it comes back. What breaks is
// only this process's connection. So an error that says containerd could
// not be reached wraps exec.ErrRuntimeUnavailable (the agent retries the
// verb later and reports nothing about the task), and Wait waits again on
// the same process once containerd answers.

// Bounds of the back-off between two attempts to reach containerd:
// quick enough to catch a restart (a second or two) at once, slow enough
// not to spin through a long outage.
const (
	retryMin = 100 * time.Millisecond
	retryMax = time.Second
)

// isUnavailable reports whether err says containerd could not be
// reached: the connection is refused, lost, or being re-established.
func isUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, exec.ErrRuntimeUnavailable) || errdefs.IsUnavailable(err) {
		return true
	}
	return status.Code(err) == codes.Unavailable
}

// markUnavailable wraps an error that says containerd could not be
// reached with exec.ErrRuntimeUnavailable, for the agent to tell it from
// a verdict on the task.
func markUnavailable(err error) error {
	if err == nil || errors.Is(err, exec.ErrRuntimeUnavailable) || !isUnavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", exec.ErrRuntimeUnavailable, err)
}

// sleepCtx waits d, or less if ctx ends first (then it returns false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
