package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// sockets are the UDP and TCP sockets of one address, or why they could not
// be opened.
type sockets struct {
	addr netip.Addr
	udp  net.PacketConn
	tcp  net.Listener
	err  error
}

func (sk sockets) close() {
	if sk.udp != nil {
		sk.udp.Close()
	}
	if sk.tcp != nil {
		sk.tcp.Close()
	}
}

// listenAll opens the sockets for addrs, inside the network namespace at
// nsPath when it is not empty. A socket belongs to the namespace it was
// created in for its whole life, so only the creation needs the thread
// switched. The error is for the namespace switch; per-address failures are
// in the sockets.
func listenAll(nsPath string, addrs []netip.Addr, port int) ([]sockets, error) {
	if nsPath == "" {
		return listenHere(addrs, port), nil
	}
	type result struct {
		socks []sockets
		err   error
	}
	done := make(chan result, 1)
	go func() {
		socks, err := inNetNS(nsPath, func() []sockets { return listenHere(addrs, port) })
		done <- result{socks, err}
	}()
	r := <-done
	return r.socks, r.err
}

// inNetNS runs fn on a thread switched into the namespace at nsPath. If the
// thread cannot be switched back it stays locked, so the runtime discards it
// when the calling goroutine ends instead of reusing a thread in the wrong
// namespace. Call it on a goroutine of its own.
func inNetNS(nsPath string, fn func() []sockets) ([]sockets, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("open network namespace %s: %w", nsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		// setns failing leaves the thread where it was, but stay safe:
		// keep it locked so it is not reused.
		return nil, fmt.Errorf("enter network namespace %s: %w", nsPath, err)
	}
	socks := fn()
	if err := netns.Set(orig); err != nil {
		return socks, fmt.Errorf("return from network namespace %s: %w (the thread is discarded)", nsPath, err)
	}
	runtime.UnlockOSThread()
	return socks, nil
}

// listenHere opens the sockets in the calling thread's network namespace.
func listenHere(addrs []netip.Addr, port int) []sockets {
	lc := net.ListenConfig{Control: freebind}
	ctx := context.Background()
	out := make([]sockets, 0, len(addrs))
	for _, a := range addrs {
		sk := sockets{addr: a}
		hostport := net.JoinHostPort(a.String(), strconv.Itoa(port))
		pc, err := lc.ListenPacket(ctx, "udp", hostport)
		if err != nil {
			sk.err = fmt.Errorf("listen udp %s: %w", hostport, err)
			out = append(out, sk)
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", hostport)
		if err != nil {
			pc.Close()
			sk.err = fmt.Errorf("listen tcp %s: %w", hostport, err)
			out = append(out, sk)
			continue
		}
		sk.udp, sk.tcp = pc, ln
		out = append(out, sk)
	}
	return out
}

// freebind lets a socket bind an address that is not on an interface (yet):
// the resolver is set up before, or while, the address is assigned.
// SO_REUSEADDR lets a restarted resolver bind while old TCP connections
// linger in TIME_WAIT.
func freebind(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); serr != nil {
			serr = fmt.Errorf("set SO_REUSEADDR: %w", serr)
			return
		}
		switch network {
		case "udp6", "tcp6":
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
		default:
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
		if serr != nil {
			serr = fmt.Errorf("set IP_FREEBIND: %w", serr)
		}
	})
	return errors.Join(err, serr)
}
