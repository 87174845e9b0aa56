package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network"
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
	var socks []sockets
	err := network.InNetNS(nsPath, func() error {
		socks = listenHere(addrs, port)
		return nil
	})
	return socks, err
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
