package lbtest

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/shoal-project/shoal/network/lb"
)

// RequestsPerCheck is enough requests that, spread over three backends at
// random, each is reached with overwhelming probability (a backend is
// missed with probability 3·(2/3)^60 ≈ 1e-10); round robin reaches each in
// three.
const RequestsPerCheck = 60

// TrafficFunc returns a fresh balancer programming the router of tp,
// everything it made removed at cleanup.
type TrafficFunc func(t *testing.T, tp *Topology) lb.Balancer

// RunTraffic is the traffic half of the conformance suite: real TCP and UDP
// through a balancer on a Topology's router. Every backend passes it on a
// kernel it works on (the nft backend here, the IPVS backend on a kernel
// with IPVS). VIPs are put on the router's loopback, as the network agent
// puts them on the node's: IPVS only sees traffic to local addresses.
func RunTraffic(t *testing.T, newBalancer TrafficFunc) {
	t.Run("PublishedPortsAndVIPs", func(t *testing.T) { publishedPortsAndVIPs(t, newBalancer) })
	t.Run("UDPFlowMovesWithItsBackend", func(t *testing.T) { udpFlowMoves(t, newBalancer) })
	t.Run("AnyPortVIP", func(t *testing.T) { anyPortVIP(t, newBalancer) })
	t.Run("Hairpin", func(t *testing.T) { hairpin(t, newBalancer) })
}

func trafficBackend(i int, port uint16) lb.Backend {
	return lb.Backend{Addr: BackendAddr(i), Port: port}
}

func applyState(t *testing.T, b lb.Balancer, fs ...lb.Frontend) {
	t.Helper()
	if err := b.Apply(context.Background(), lb.State{Frontends: fs}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// addLocal puts addr on the router's loopback.
func (tp *Topology) addLocal(t *testing.T, addr netip.Addr) {
	t.Helper()
	run(t, "ip", "-n", tp.Router, "addr", "add", netip.PrefixFrom(addr, addr.BitLen()).String(), "dev", "lo")
}

// WantSpread fails t unless every reply succeeded and every one of want
// (backend names, or "error: ..." for expected failures) was seen, and
// nothing else.
func WantSpread(t testing.TB, what string, replies []Reply, want ...string) {
	t.Helper()
	got := Count(replies)
	for _, w := range want {
		if got[w] == 0 {
			t.Errorf("%s: %s never answered; replies %v", what, w, got)
		}
	}
	for k := range got {
		found := false
		for _, w := range want {
			found = found || k == w
		}
		if !found {
			t.Errorf("%s: unexpected %q (%d times); replies %v", what, k, got[k], got)
		}
	}
}

func publishedPortsAndVIPs(t *testing.T, newBalancer TrafficFunc) {
	tp := NewTopology(t, 3)
	for i := range 3 {
		tp.Serve(t, i, "tcp", 80)
		tp.Serve(t, i, "udp", 53)
	}
	b := newBalancer(t, tp)
	all := func(port uint16) []lb.Backend {
		return []lb.Backend{trafficBackend(0, port), trafficBackend(1, port), trafficBackend(2, port)}
	}
	vip := netip.MustParseAddr("10.231.9.9")
	tp.addLocal(t, vip)
	applyState(t, b,
		lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: all(80), Masquerade: true},
		lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: all(53), Masquerade: true},
		lb.Frontend{Name: "vip:web:80/tcp", Protocol: lb.TCP, Port: 80, VIP: vip, Backends: all(80)[:2]},
		lb.Frontend{Name: "svc:empty:9000/tcp", Protocol: lb.TCP, Port: 9000, Masquerade: true},
		lb.Frontend{Name: "svc:empty:9000/udp", Protocol: lb.UDP, Port: 9000, Masquerade: true},
		lb.Frontend{Name: "svc:keep:7000/tcp", Protocol: lb.TCP, Port: 7000, Backends: all(80)[2:]},
	)
	node := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(RouterAddr, port) }

	t.Run("published tcp reaches every backend, masqueraded", func(t *testing.T) {
		replies := Request(t, tp.Client, "tcp", node(8080), RequestsPerCheck)
		WantSpread(t, "tcp 8080", replies, "backend0", "backend1", "backend2")
		for _, r := range replies {
			if r.Err == "" && r.Seen != RouterBridgeAddr.String() {
				t.Errorf("backend %s saw client %s, want the router %s (masquerade)", r.Backend, r.Seen, RouterBridgeAddr)
			}
		}
	})
	t.Run("published udp reaches every backend", func(t *testing.T) {
		WantSpread(t, "udp 5353", Request(t, tp.Client, "udp", node(5353), RequestsPerCheck), "backend0", "backend1", "backend2")
	})
	t.Run("published port from the node itself", func(t *testing.T) {
		WantSpread(t, "tcp 8080 from router", Request(t, tp.Router, "tcp", node(8080), RequestsPerCheck), "backend0", "backend1", "backend2")
	})
	t.Run("published port on the node's other address", func(t *testing.T) {
		WantSpread(t, "tcp 8080 via bridge address", Request(t, tp.Client, "tcp", netip.AddrPortFrom(RouterBridgeAddr, 8080), RequestsPerCheck),
			"backend0", "backend1", "backend2")
	})
	t.Run("vip balances and keeps the client address", func(t *testing.T) {
		replies := Request(t, tp.Client, "tcp", netip.AddrPortFrom(vip, 80), RequestsPerCheck)
		WantSpread(t, "vip", replies, "backend0", "backend1")
		for _, r := range replies {
			if r.Err == "" && r.Seen != ClientAddr.String() {
				t.Errorf("backend %s saw client %s, want %s (no masquerade)", r.Backend, r.Seen, ClientAddr)
			}
		}
	})
	t.Run("source-ip mode keeps the client address", func(t *testing.T) {
		replies := Request(t, tp.Client, "tcp", node(7000), 5)
		WantSpread(t, "tcp 7000", replies, "backend2")
		for _, r := range replies {
			if r.Err == "" && r.Seen != ClientAddr.String() {
				t.Errorf("backend saw client %s, want %s", r.Seen, ClientAddr)
			}
		}
	})
	t.Run("no backends refuses tcp and udp", func(t *testing.T) {
		WantSpread(t, "tcp 9000", Request(t, tp.Client, "tcp", node(9000), 3), "error: refused")
		WantSpread(t, "udp 9000", Request(t, tp.Client, "udp", node(9000), 3), "error: refused")
	})
	t.Run("removed backend gets no new connections or datagrams", func(t *testing.T) {
		applyState(t, b,
			lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: all(80)[1:], Masquerade: true},
			lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: all(53)[:1], Masquerade: true},
		)
		WantSpread(t, "tcp 8080", Request(t, tp.Client, "tcp", node(8080), RequestsPerCheck), "backend1", "backend2")
		WantSpread(t, "udp 5353", Request(t, tp.Client, "udp", node(5353), 20), "backend0")
		for _, r := range Request(t, tp.Client, "tcp", netip.AddrPortFrom(vip, 80), 1) {
			if r.Err == "" {
				t.Errorf("removed VIP still answered by %s", r.Backend)
			}
		}
	})
}

// udpFlowMoves: a UDP client sending from one port (one flow, kept alive
// by its datagrams) moves with its backend when that backend is replaced,
// losing no datagram (moby/moby#30464's stale entries).
func udpFlowMoves(t *testing.T, newBalancer TrafficFunc) {
	tp := NewTopology(t, 2)
	tp.Serve(t, 0, "udp", 53)
	tp.Serve(t, 1, "udp", 53)
	b := newBalancer(t, tp)
	fe := lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: []lb.Backend{trafficBackend(0, 53)}, Masquerade: true}
	applyState(t, b, fe)
	target := netip.AddrPortFrom(RouterAddr, 5353)
	WantSpread(t, "before", RequestFromPort(t, tp.Client, target, 40000, 2), "backend0")
	fe.Backends = []lb.Backend{trafficBackend(1, 53)}
	applyState(t, b, fe)
	WantSpread(t, "after", RequestFromPort(t, tp.Client, target, 40000, 2), "backend1")
}

// anyPortVIP: an any-port VIP (Port 0) balances every port of its protocol
// to its backends, keeping the destination port, and a frontend on one port
// of the same VIP takes precedence.
func anyPortVIP(t *testing.T, newBalancer TrafficFunc) {
	tp := NewTopology(t, 2)
	for i := range 2 {
		tp.Serve(t, i, "tcp", 80)
		tp.Serve(t, i, "tcp", 8080)
		tp.Serve(t, i, "udp", 53)
	}
	b := newBalancer(t, tp)
	vip := netip.MustParseAddr("10.231.9.7")
	tp.addLocal(t, vip)
	both := []lb.Backend{{Addr: BackendAddr(0)}, {Addr: BackendAddr(1)}}
	applyState(t, b,
		lb.Frontend{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: vip, Backends: both},
		lb.Frontend{Name: "vip:any:udp", Protocol: lb.UDP, VIP: vip, Backends: both, Masquerade: true},
	)
	at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(vip, port) }
	for _, port := range []uint16{80, 8080} {
		replies := Request(t, tp.Client, "tcp", at(port), RequestsPerCheck)
		WantSpread(t, fmt.Sprintf("tcp %d", port), replies, "backend0", "backend1")
		for _, r := range replies {
			if r.Err == "" && r.Seen != ClientAddr.String() {
				t.Errorf("tcp %d: backend %s saw client %s, want %s (no masquerade)", port, r.Backend, r.Seen, ClientAddr)
			}
		}
	}
	replies := Request(t, tp.Client, "udp", at(53), RequestsPerCheck)
	WantSpread(t, "udp 53", replies, "backend0", "backend1")
	for _, r := range replies {
		if r.Err == "" && r.Seen != RouterBridgeAddr.String() {
			t.Errorf("udp 53: backend %s saw client %s, want the router %s (masquerade)", r.Backend, r.Seen, RouterBridgeAddr)
		}
	}
	// Nothing listens on 81 on the backends: they refuse, the VIP does not
	// swallow it.
	WantSpread(t, "tcp 81", Request(t, tp.Client, "tcp", at(81), 3), "error: refused")

	applyState(t, b,
		lb.Frontend{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: vip, Backends: both},
		lb.Frontend{Name: "vip:one:8080/tcp", Protocol: lb.TCP, VIP: vip, Port: 8080, Backends: []lb.Backend{trafficBackend(1, 80)}},
	)
	WantSpread(t, "tcp 8080 with its own frontend", Request(t, tp.Client, "tcp", at(8080), 10), "backend1")
	WantSpread(t, "tcp 80 still any-port", Request(t, tp.Client, "tcp", at(80), RequestsPerCheck), "backend0", "backend1")
	for _, r := range Request(t, tp.Client, "udp", at(53), 3) {
		if r.Err == "" {
			t.Errorf("removed any-port UDP VIP still answered by %s", r.Backend)
		}
	}
}

// hairpin: a task reaching its own service through a frontend that keeps
// client addresses, and sent to itself, is masqueraded (else it would
// answer itself from the wrong address), while other clients keep theirs.
func hairpin(t *testing.T, newBalancer TrafficFunc) {
	tp := NewTopology(t, 1)
	tp.Serve(t, 0, "tcp", 80)
	b := newBalancer(t, tp)
	vip, anyVIP := netip.MustParseAddr("10.231.9.8"), netip.MustParseAddr("10.231.9.9")
	tp.addLocal(t, vip)
	tp.addLocal(t, anyVIP)
	applyState(t, b,
		lb.Frontend{Name: "vip:self:80/tcp", Protocol: lb.TCP, Port: 80, VIP: vip, Backends: []lb.Backend{trafficBackend(0, 80)}},
		lb.Frontend{Name: "vip:self:any/tcp", Protocol: lb.TCP, VIP: anyVIP, Backends: []lb.Backend{{Addr: BackendAddr(0)}}},
		lb.Frontend{Name: "svc:local:7000/tcp", Protocol: lb.TCP, Port: 7000, Backends: []lb.Backend{trafficBackend(0, 80)}},
	)
	for _, target := range []netip.AddrPort{
		netip.AddrPortFrom(vip, 80),
		netip.AddrPortFrom(anyVIP, 80),
		netip.AddrPortFrom(RouterBridgeAddr, 7000),
	} {
		for _, r := range Request(t, tp.Backends[0], "tcp", target, 3) {
			if r.Err != "" || r.Seen != RouterBridgeAddr.String() {
				t.Errorf("backend0 to itself through %s: %+v, want an answer seeing the router %s", target, r, RouterBridgeAddr)
			}
		}
		for _, r := range Request(t, tp.Client, "tcp", target, 3) {
			if r.Err != "" || r.Seen != ClientAddr.String() {
				t.Errorf("client through %s: %+v, want an answer seeing the client %s", target, r, ClientAddr)
			}
		}
	}
}

// BenchState is what the load balancer benchmarks program: n published TCP
// frontends (ports 20000+i, masqueraded) with m backends each. Every
// backend's benchmarks use it, so their numbers compare.
func BenchState(n, m int) lb.State {
	var s lb.State
	for i := range n {
		f := lb.Frontend{Name: fmt.Sprintf("svc:s%04d:%d/tcp", i, 20000+i), Protocol: lb.TCP, Port: uint16(20000 + i), Masquerade: true}
		for j := range m {
			f.Backends = append(f.Backends, lb.Backend{Addr: netip.AddrFrom4([4]byte{10, 232, byte(i / 256), byte(i % 256)}), Port: uint16(1000 + j)})
		}
		s.Frontends = append(s.Frontends, f)
	}
	return s
}

// ReportMS reports the benchmark's mean time per operation in
// milliseconds, the unit the load balancer benchmarks compare in.
func ReportMS(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
}
