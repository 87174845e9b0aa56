package dns

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	miekg "github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/network/attach/netnstest"
)

// TestListensInsideNetNS serves a namespace the way a node serves a task:
// the sockets are opened inside it, on an address that is not assigned yet
// (the attachment adds it later), and a client inside the namespace gets
// answers with its own address as the source.
func TestListensInsideNetNS(t *testing.T) {
	netnstest.RequireKernel(t)
	ns := netnstest.New(t, "dns")
	taskAddr := netip.MustParseAddr("10.253.0.53")

	n := &names{table: map[string][]netip.Addr{"web": addrs("10.0.0.2")}}
	s, err := NewServer(Config{Upstreams: []string{}, Lookup: n.lookup, Logger: testLogger(t), NetNSPath: ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if err := s.SetAddrs([]netip.Prefix{netip.PrefixFrom(taskAddr, 8), netip.PrefixFrom(lo1, 8)}); err != nil {
		t.Fatalf("SetAddrs before the address is assigned: %v", err)
	}
	ns.MustRun(t, "ip", "addr", "add", taskAddr.String()+"/32", "dev", "lo")

	for _, server := range []string{"10.253.0.53:53", "127.0.0.1:53"} {
		for _, network := range []string{"udp", "tcp"} {
			resp, err := exchangeInNetNS(ns.Path, network, server, "web.", miekg.TypeA)
			if err != nil {
				t.Errorf("%s query to %s from inside the namespace: %v", network, server, err)
				continue
			}
			if got := answerAddrs(t, resp); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.2") {
				t.Errorf("%s query to %s: answer %v, want 10.0.0.2", network, server, got)
			}
			if want, _ := netip.ParseAddrPort(server); n.lastAsked(t).src != want.Addr() {
				t.Errorf("%s query to %s: Lookup got source %s, want %s", network, server, n.lastAsked(t).src, want.Addr())
			}
		}
	}

	// Removing an address closes its sockets in the namespace.
	if err := s.SetAddrs([]netip.Prefix{netip.PrefixFrom(lo1, 8)}); err != nil {
		t.Fatal(err)
	}
	if _, err := exchangeInNetNS(ns.Path, "tcp", "10.253.0.53:53", "web.", miekg.TypeA); err == nil {
		t.Error("10.253.0.53 still answers after it was removed")
	}
}

// exchangeInNetNS opens the client socket inside the namespace at nsPath on
// a thread of its own and queries over it from here.
func exchangeInNetNS(nsPath, network, server, name string, qtype uint16) (*miekg.Msg, error) {
	c := &miekg.Client{Net: network, Timeout: queryTimeout}
	type dialed struct {
		conn *miekg.Conn
		err  error
	}
	done := make(chan dialed, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- dialed{err: err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			done <- dialed{err: err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			done <- dialed{err: err} // thread stays locked and is discarded
			return
		}
		conn, dialErr := c.Dial(server)
		if err := netns.Set(orig); err != nil {
			if conn != nil {
				conn.Close()
			}
			done <- dialed{err: fmt.Errorf("restore network namespace: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		done <- dialed{conn, dialErr}
	}()
	d := <-done
	if d.err != nil {
		return nil, d.err
	}
	defer d.conn.Close()
	resp, _, err := c.ExchangeWithConn(new(miekg.Msg).SetQuestion(name, qtype), d.conn)
	return resp, err
}
