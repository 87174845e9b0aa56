package netagent

import (
	"bytes"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
)

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// enableForwarding sets net.ipv4.ip_forward=1 in the namespace at path (""
// = the caller's): the node routes mesh and VIP traffic between its bridges
// and the world. /proc/sys/net shows the namespace of the thread that opens
// it, so the file is opened on a locked thread that enters the namespace
// and leaves again; a thread that cannot leave is never unlocked, so the
// runtime ends it instead of reusing it.
func enableForwarding(path string) error {
	if path == "" {
		return writeForward()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("ip_forward: open network namespace %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("ip_forward: current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("ip_forward: enter network namespace %s: %w", path, err)
			return
		}
		werr := writeForward()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the goroutine exits and the thread with it.
			errc <- fmt.Errorf("ip_forward: leave network namespace %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- werr
	}()
	return <-errc
}

func writeForward() error {
	cur, err := os.ReadFile(ipForwardPath)
	if err == nil && bytes.Equal(bytes.TrimSpace(cur), []byte("1")) {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable IPv4 forwarding: %w", err)
	}
	return nil
}
