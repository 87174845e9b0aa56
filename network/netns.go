package network

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// InNetNS runs fn in the network namespace at path ("" runs it as it is):
// on a goroutine of its own, whose OS thread enters the namespace for fn and
// leaves it afterwards. What fn opens (sockets, /proc/sys/net files) belongs
// to that namespace for its whole life. A thread that cannot be switched
// back stays locked, so the runtime discards it when the goroutine ends
// instead of reusing a thread in the wrong namespace. The error is fn's,
// joined with any error entering or leaving the namespace.
func InNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			// setns failing leaves the thread where it was, but stay
			// safe: it stays locked and is not reused.
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w (the thread is discarded)", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
