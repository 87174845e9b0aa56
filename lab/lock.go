package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockFile lives outside RunRoot: Down removes RunRoot, and a lock on a
// removed file would no longer exclude anybody.
const lockFile = "/run/shoal-lab.lock"

// lockPoll is how often Exclusive tries the lock again; flock itself
// cannot be told to give up when a context ends.
const lockPoll = 200 * time.Millisecond

// Exclusive waits until this process is the machine's only user of the
// lab slot (there is one bridge, one set of names) and returns the
// function that gives it back. Tests that make labs hold it, since `go
// test ./...` runs the tests of several packages at once. The lock goes
// with the process, so a crashed test never leaves it held.
func Exclusive(ctx context.Context) (release func(), err error) {
	f, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lab lock: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockFile, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("wait for the lab lock %s: %w", lockFile, ctx.Err())
		case <-time.After(lockPoll):
		}
	}
}
