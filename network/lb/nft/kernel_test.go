package nft

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

func TestHelperProcess(t *testing.T) { lbtest.HelperProcess() }

// requestsPerCheck is enough requests that, spread at random over three
// backends, each is reached with overwhelming probability (a backend is missed
// with probability 3·(2/3)^60 ≈ 1e-10).
const requestsPerCheck = 60

func backend(i int, port uint16) lb.Backend {
	return lb.Backend{Addr: lbtest.BackendAddr(i), Port: port}
}

func newBalancer(t *testing.T, tp *lbtest.Topology) *Balancer {
	t.Helper()
	b, err := New(WithNetNS(tp.RouterNS), WithTable("shoal-lb-test"))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func apply(t *testing.T, b *Balancer, fs ...lb.Frontend) {
	t.Helper()
	if err := b.Apply(context.Background(), lb.State{Frontends: fs}); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// wantSpread fails unless every reply succeeded and every one of want was
// reached, and nothing else.
func wantSpread(t *testing.T, what string, replies []lbtest.Reply, want ...string) {
	t.Helper()
	got := lbtest.Count(replies)
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

func TestKernelPublishedPortsAndVIPs(t *testing.T) {
	tp := lbtest.NewTopology(t, 3)
	for i := range 3 {
		tp.Serve(t, i, "tcp", 80)
		tp.Serve(t, i, "udp", 53)
	}
	b := newBalancer(t, tp)
	all := func(port uint16) []lb.Backend {
		return []lb.Backend{backend(0, port), backend(1, port), backend(2, port)}
	}
	vip := netip.MustParseAddr("10.231.9.9")
	apply(t, b,
		lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: all(80), Masquerade: true},
		lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: all(53), Masquerade: true},
		lb.Frontend{Name: "vip:web:80/tcp", Protocol: lb.TCP, Port: 80, VIP: vip, Backends: all(80)[:2]},
		lb.Frontend{Name: "svc:empty:9000/tcp", Protocol: lb.TCP, Port: 9000, Masquerade: true},
		lb.Frontend{Name: "svc:empty:9000/udp", Protocol: lb.UDP, Port: 9000, Masquerade: true},
		lb.Frontend{Name: "svc:keep:7000/tcp", Protocol: lb.TCP, Port: 7000, Backends: all(80)[2:]},
	)
	node := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(lbtest.RouterAddr, port) }

	t.Run("published tcp reaches every backend, masqueraded", func(t *testing.T) {
		replies := lbtest.Request(t, tp.Client, "tcp", node(8080), requestsPerCheck)
		wantSpread(t, "tcp 8080", replies, "backend0", "backend1", "backend2")
		for _, r := range replies {
			if r.Err == "" && r.Seen != lbtest.RouterBridgeAddr.String() {
				t.Errorf("backend %s saw client %s, want the router %s (masquerade)", r.Backend, r.Seen, lbtest.RouterBridgeAddr)
			}
		}
	})
	t.Run("published udp reaches every backend", func(t *testing.T) {
		wantSpread(t, "udp 5353", lbtest.Request(t, tp.Client, "udp", node(5353), requestsPerCheck), "backend0", "backend1", "backend2")
	})
	t.Run("published port from the node itself", func(t *testing.T) {
		wantSpread(t, "tcp 8080 from router", lbtest.Request(t, tp.Router, "tcp", node(8080), requestsPerCheck), "backend0", "backend1", "backend2")
	})
	t.Run("published port on the node's other address", func(t *testing.T) {
		wantSpread(t, "tcp 8080 via bridge address", lbtest.Request(t, tp.Client, "tcp", netip.AddrPortFrom(lbtest.RouterBridgeAddr, 8080), requestsPerCheck),
			"backend0", "backend1", "backend2")
	})
	t.Run("vip balances and keeps the client address", func(t *testing.T) {
		replies := lbtest.Request(t, tp.Client, "tcp", netip.AddrPortFrom(vip, 80), requestsPerCheck)
		wantSpread(t, "vip", replies, "backend0", "backend1")
		for _, r := range replies {
			if r.Err == "" && r.Seen != lbtest.ClientAddr.String() {
				t.Errorf("backend %s saw client %s, want %s (no masquerade)", r.Backend, r.Seen, lbtest.ClientAddr)
			}
		}
	})
	t.Run("source-ip mode keeps the client address", func(t *testing.T) {
		replies := lbtest.Request(t, tp.Client, "tcp", node(7000), 5)
		wantSpread(t, "tcp 7000", replies, "backend2")
		for _, r := range replies {
			if r.Err == "" && r.Seen != lbtest.ClientAddr.String() {
				t.Errorf("backend saw client %s, want %s", r.Seen, lbtest.ClientAddr)
			}
		}
	})
	t.Run("no backends refuses tcp and udp", func(t *testing.T) {
		wantSpread(t, "tcp 9000", lbtest.Request(t, tp.Client, "tcp", node(9000), 3), "error: refused")
		wantSpread(t, "udp 9000", lbtest.Request(t, tp.Client, "udp", node(9000), 3), "error: refused")
	})
	t.Run("removed backend gets no more traffic", func(t *testing.T) {
		apply(t, b,
			lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: all(80)[1:], Masquerade: true},
			lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: all(53)[:1], Masquerade: true},
		)
		wantSpread(t, "tcp 8080", lbtest.Request(t, tp.Client, "tcp", node(8080), requestsPerCheck), "backend1", "backend2")
		wantSpread(t, "udp 5353", lbtest.Request(t, tp.Client, "udp", node(5353), 20), "backend0")
		for _, r := range lbtest.Request(t, tp.Client, "tcp", netip.AddrPortFrom(vip, 80), 1) {
			if r.Err == "" {
				t.Errorf("removed VIP still answered by %s", r.Backend)
			}
		}
	})
}

// TestKernelUDPConntrackFlushed checks that a UDP flow pinned to a backend by
// conntrack moves when that backend is removed.
func TestKernelUDPConntrackFlushed(t *testing.T) {
	tp := lbtest.NewTopology(t, 2)
	tp.Serve(t, 0, "udp", 53)
	tp.Serve(t, 1, "udp", 53)
	b := newBalancer(t, tp)
	fe := lb.Frontend{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Backends: []lb.Backend{backend(0, 53)}, Masquerade: true}
	apply(t, b, fe)
	// One long-lived "client": the same source port each time, so without a
	// flush conntrack keeps sending it to backend0.
	target := netip.AddrPortFrom(lbtest.RouterAddr, 5353)
	wantSpread(t, "before", lbtest.RequestFromPort(t, tp.Client, target, 40000, 2), "backend0")
	fe.Backends = []lb.Backend{backend(1, 53)}
	apply(t, b, fe)
	wantSpread(t, "after", lbtest.RequestFromPort(t, tp.Client, target, 40000, 2), "backend1")
}

// listChains returns each chain of the table as `nft -a` prints it (rules
// with their handles), by chain name, and the map elements by comment.
func listChains(t *testing.T, ns, table string) (chains map[string]string, elements map[string]string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-a", "list", "table", "inet", table).CombinedOutput()
	if err != nil {
		t.Fatalf("nft list table: %v: %s", err, out)
	}
	chains, elements = map[string]string{}, map[string]string{}
	var cur string
	for line := range strings.Lines(string(out)) {
		l := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(l, "chain "):
			cur = strings.Fields(l)[1]
		case l == "}":
			cur = ""
		case cur != "":
			chains[cur] += l + "\n"
		}
	}
	for _, m := range elementRE.FindAllStringSubmatch(string(out), -1) {
		elements[m[2]] = m[1] + " : " + m[3]
	}
	return chains, elements
}

var elementRE = regexp.MustCompile(`([^{,\s][^{,]*?) comment "([^"]+)" : (goto [^\s,}]+)`)

func TestKernelChangeTouchesOnlyItsFrontend(t *testing.T) {
	lbtest.RequireRoot(t)
	name, ns := lbtest.NewNetNS(t)
	b, err := New(WithNetNS(ns), WithTable("shoal-lb-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	var fs []lb.Frontend
	for i := range 20 {
		f := lb.Frontend{Name: fmt.Sprintf("svc:s%d:%d/tcp", i, 8000+i), Protocol: lb.TCP, Port: uint16(8000 + i), Masquerade: true}
		if i%2 == 1 {
			f.Name, f.VIP, f.Masquerade = fmt.Sprintf("vip:s%d:80/tcp", i), netip.AddrFrom4([4]byte{10, 231, 9, byte(i)}), false
		}
		for j := range 3 {
			f.Backends = append(f.Backends, lb.Backend{Addr: netip.AddrFrom4([4]byte{10, 231, 0, byte(10 + i*3 + j)}), Port: 80})
		}
		fs = append(fs, f)
	}
	apply(t, b, fs...)
	beforeChains, beforeElems := listChains(t, name, "shoal-lb-test")

	changes := []struct {
		name   string
		change func(fs []lb.Frontend) []lb.Frontend
		// touched are the frontends whose chains and elements may change.
		touched []int
	}{
		{"add a backend", func(fs []lb.Frontend) []lb.Frontend {
			fs[4].Backends = append(fs[4].Backends, lb.Backend{Addr: netip.MustParseAddr("10.231.0.200"), Port: 80})
			return fs
		}, []int{4}},
		{"remove a backend", func(fs []lb.Frontend) []lb.Frontend { fs[7].Backends = fs[7].Backends[1:]; return fs }, []int{7}},
		{"remove every backend", func(fs []lb.Frontend) []lb.Frontend { fs[8].Backends = nil; return fs }, []int{8}},
		{"change the port", func(fs []lb.Frontend) []lb.Frontend { fs[10].Port = 9999; return fs }, []int{10}},
		{"toggle masquerade", func(fs []lb.Frontend) []lb.Frontend { fs[12].Masquerade = !fs[12].Masquerade; return fs }, []int{12}},
		{"remove a frontend", func(fs []lb.Frontend) []lb.Frontend { return append(fs[:3:3], fs[4:]...) }, []int{3}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			next := c.change(cloneFrontends(fs))
			apply(t, b, next...)
			afterChains, afterElems := listChains(t, name, "shoal-lb-test")
			touched := map[string]bool{}
			for _, i := range c.touched {
				touched[fs[i].Name] = true
			}
			for ch, rules := range beforeChains {
				if owner := chainOwner(ch, fs); touched[owner] {
					continue
				}
				if afterChains[ch] != rules {
					t.Errorf("chain %s changed:\nbefore:\n%safter:\n%s", ch, rules, afterChains[ch])
				}
			}
			for fe, el := range beforeElems {
				if !touched[fe] && afterElems[fe] != el {
					t.Errorf("element of %s changed: %q -> %q", fe, el, afterElems[fe])
				}
			}
			if len(afterChains) == 0 || (c.name != "remove a frontend" && len(afterElems) != len(beforeElems)) {
				t.Errorf("elements: %d before, %d after", len(beforeElems), len(afterElems))
			}
			changedSomething := false
			for ch := range afterChains {
				if touched[chainOwner(ch, next)] && afterChains[ch] != beforeChains[ch] {
					changedSomething = true
				}
			}
			for fe := range touched {
				changedSomething = changedSomething || afterElems[fe] != beforeElems[fe]
			}
			if !changedSomething {
				t.Errorf("the change to %v is not visible in the ruleset", c.touched)
			}
			// Back to the start for the next case; that too must only touch
			// the same frontend.
			apply(t, b, fs...)
			beforeChains, beforeElems = listChains(t, name, "shoal-lb-test")
		})
	}
}

func cloneFrontends(fs []lb.Frontend) []lb.Frontend {
	out := make([]lb.Frontend, len(fs))
	for i, f := range fs {
		f.Backends = append([]lb.Backend(nil), f.Backends...)
		out[i] = f
	}
	return out
}

// chainOwner returns the frontend a chain belongs to, or "" for the table's
// own chains.
func chainOwner(chain string, fs []lb.Frontend) string {
	for _, f := range fs {
		if chain == frontendChain(f.Name) {
			return f.Name
		}
	}
	return ""
}

func TestKernelFailedTransactionKeepsRulesAndResyncs(t *testing.T) {
	tp := lbtest.NewTopology(t, 2)
	tp.Serve(t, 0, "tcp", 80)
	tp.Serve(t, 1, "tcp", 80)
	b := newBalancer(t, tp)
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: []lb.Backend{backend(0, 80)}, Masquerade: true}
	apply(t, b, web)
	before, _ := listChains(t, tp.Router, "shoal-lb-test")

	// An element jumping to a chain that does not exist makes the kernel
	// refuse the whole transaction.
	b.beforeFlush = func(c conn, tbl *nftables.Table) {
		set := &nftables.Set{Table: tbl, Name: dispatch.SetPublished}
		c.SetAddElements(set, []nftables.SetElement{{
			Key:         []byte{17, 0, 0, 0, 0x10, 0x00, 0, 0},
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "no-such-chain"},
		}})
	}
	moved := web
	moved.Backends = []lb.Backend{backend(1, 80)}
	if err := b.Apply(context.Background(), lb.State{Frontends: []lb.Frontend{moved}}); err == nil {
		t.Fatal("Apply with an invalid element injected: nil error, want the kernel's refusal")
	}
	after, _ := listChains(t, tp.Router, "shoal-lb-test")
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("failed transaction changed the ruleset:\nbefore %v\nafter %v", before, after)
	}
	wantSpread(t, "after failure", lbtest.Request(t, tp.Client, "tcp", netip.AddrPortFrom(lbtest.RouterAddr, 8080), 5), "backend0")

	b.beforeFlush = nil
	// The same state again: nothing differs from what the balancer meant to
	// program last time, so only a full resync can fix the kernel.
	apply(t, b, moved)
	wantSpread(t, "after resync", lbtest.Request(t, tp.Client, "tcp", netip.AddrPortFrom(lbtest.RouterAddr, 8080), 5), "backend1")
	resynced, _ := listChains(t, tp.Router, "shoal-lb-test")
	for ch := range resynced {
		if strings.HasPrefix(ch, "fe-") && chainOwner(ch, []lb.Frontend{moved}) == "" {
			t.Errorf("stale chain %s after resync", ch)
		}
	}
}

func TestKernelCloseRemovesTable(t *testing.T) {
	lbtest.RequireRoot(t)
	name, ns := lbtest.NewNetNS(t)
	b, err := New(WithNetNS(ns), WithTable("shoal-lb-test"))
	if err != nil {
		t.Fatal(err)
	}
	apply(t, b, lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: []lb.Backend{backend(0, 80)}})
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	out, err := exec.Command("ip", "netns", "exec", name, "nft", "list", "ruleset").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list ruleset: %v: %s", err, out)
	}
	if strings.TrimSpace(string(out)) != "" {
		t.Errorf("ruleset after Close:\n%s", out)
	}
	if err := b.Apply(context.Background(), lb.State{}); err == nil {
		t.Error("Apply after Close: nil error")
	}
}

// TestKernelAnyPortVIP checks that an any-port VIP (Port 0) balances every
// port of its protocol to its backends, keeping the destination port, and
// that a frontend on one port of the same VIP takes precedence.
func TestKernelAnyPortVIP(t *testing.T) {
	tp := lbtest.NewTopology(t, 2)
	for i := range 2 {
		tp.Serve(t, i, "tcp", 80)
		tp.Serve(t, i, "tcp", 8080)
		tp.Serve(t, i, "udp", 53)
	}
	b := newBalancer(t, tp)
	vip := netip.MustParseAddr("10.231.9.7")
	both := []lb.Backend{{Addr: lbtest.BackendAddr(0)}, {Addr: lbtest.BackendAddr(1)}}
	apply(t, b,
		lb.Frontend{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: vip, Backends: both},
		lb.Frontend{Name: "vip:any:udp", Protocol: lb.UDP, VIP: vip, Backends: both, Masquerade: true},
	)
	at := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(vip, port) }
	for _, port := range []uint16{80, 8080} {
		replies := lbtest.Request(t, tp.Client, "tcp", at(port), requestsPerCheck)
		wantSpread(t, fmt.Sprintf("tcp %d", port), replies, "backend0", "backend1")
		for _, r := range replies {
			if r.Err == "" && r.Seen != lbtest.ClientAddr.String() {
				t.Errorf("tcp %d: backend %s saw client %s, want %s (no masquerade)", port, r.Backend, r.Seen, lbtest.ClientAddr)
			}
		}
	}
	replies := lbtest.Request(t, tp.Client, "udp", at(53), requestsPerCheck)
	wantSpread(t, "udp 53", replies, "backend0", "backend1")
	for _, r := range replies {
		if r.Err == "" && r.Seen != lbtest.RouterBridgeAddr.String() {
			t.Errorf("udp 53: backend %s saw client %s, want the router %s (masquerade)", r.Backend, r.Seen, lbtest.RouterBridgeAddr)
		}
	}
	// Nothing listens on 81 on the backends: they refuse, the VIP does not
	// swallow it.
	wantSpread(t, "tcp 81", lbtest.Request(t, tp.Client, "tcp", at(81), 3), "error: refused")

	apply(t, b,
		lb.Frontend{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: vip, Backends: both},
		lb.Frontend{Name: "vip:one:8080/tcp", Protocol: lb.TCP, VIP: vip, Port: 8080, Backends: []lb.Backend{backend(1, 80)}},
	)
	wantSpread(t, "tcp 8080 with its own frontend", lbtest.Request(t, tp.Client, "tcp", at(8080), 10), "backend1")
	wantSpread(t, "tcp 80 still any-port", lbtest.Request(t, tp.Client, "tcp", at(80), requestsPerCheck), "backend0", "backend1")
	for _, r := range lbtest.Request(t, tp.Client, "udp", at(53), 3) {
		if r.Err == "" {
			t.Errorf("removed any-port UDP VIP still answered by %s", r.Backend)
		}
	}
}

// TestKernelHairpin checks that a task reaching its own service through a
// frontend that keeps client addresses, and sent to itself, is masqueraded
// (else it would answer itself from the wrong address), while other
// clients keep theirs.
func TestKernelHairpin(t *testing.T) {
	tp := lbtest.NewTopology(t, 1)
	tp.Serve(t, 0, "tcp", 80)
	b := newBalancer(t, tp)
	vip := netip.MustParseAddr("10.231.9.8")
	apply(t, b,
		lb.Frontend{Name: "vip:self:80/tcp", Protocol: lb.TCP, Port: 80, VIP: vip, Backends: []lb.Backend{backend(0, 80)}},
		lb.Frontend{Name: "vip:self:any/tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("10.231.9.9"), Backends: []lb.Backend{{Addr: lbtest.BackendAddr(0)}}},
		lb.Frontend{Name: "svc:local:7000/tcp", Protocol: lb.TCP, Port: 7000, Backends: []lb.Backend{backend(0, 80)}},
	)
	for _, target := range []netip.AddrPort{
		netip.AddrPortFrom(vip, 80),
		netip.MustParseAddrPort("10.231.9.9:80"),
		netip.AddrPortFrom(lbtest.RouterBridgeAddr, 7000),
	} {
		for _, r := range lbtest.Request(t, tp.Backends[0], "tcp", target, 3) {
			if r.Err != "" || r.Seen != lbtest.RouterBridgeAddr.String() {
				t.Errorf("backend0 to itself through %s: %+v, want an answer seeing the router %s", target, r, lbtest.RouterBridgeAddr)
			}
		}
		for _, r := range lbtest.Request(t, tp.Client, "tcp", target, 3) {
			if r.Err != "" || r.Seen != lbtest.ClientAddr.String() {
				t.Errorf("client through %s: %+v, want an answer seeing the client %s", target, r, lbtest.ClientAddr)
			}
		}
	}
	// The hairpin entry goes with the backend.
	apply(t, b)
	c, err := nftables.New(nftables.WithNetNSFd(int(tp.RouterNS)))
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.GetSetByName(&nftables.Table{Name: "shoal-lb-test", Family: nftables.TableFamilyINet}, setHairpin4)
	if err != nil {
		t.Fatal(err)
	}
	if es, err := c.GetSetElements(s); err != nil || len(es) != 0 {
		t.Errorf("hairpin set after removing every frontend: %d elements, %v", len(es), err)
	}
}
