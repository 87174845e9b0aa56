package lbtest

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/network/lb"
)

// Programmed is one frontend as a backend reads it back from where it
// programmed it (the kernel, or a fake behind the backend's own seam).
type Programmed struct {
	// Key is lb.Key of the frontend the state matches on.
	Key string
	// Backends as "addr:port", sorted.
	Backends []string
	// Masquerade is compared only when there are backends: a frontend
	// without any refuses every connection, and a backend need not remember
	// the flag for it.
	Masquerade bool
}

func (p Programmed) String() string {
	if len(p.Backends) == 0 {
		return fmt.Sprintf("%s -> refused", p.Key)
	}
	return fmt.Sprintf("%s -> %v masq=%v", p.Key, p.Backends, p.Masquerade)
}

// Instance is a fresh balancer with the means to look behind it.
type Instance struct {
	Balancer lb.Balancer
	// Read returns what is programmed, by frontend name. After Close it must
	// find nothing: an empty result means nothing the balancer made is left.
	Read func(t testing.TB) map[string]Programmed
	// FailNext makes the balancer's next write fail part way, the way a
	// kernel refusal would.
	FailNext func()
	// Tamper changes what is programmed behind the balancer's back, as
	// another program or a half-applied write would, so that only a full
	// resync puts it right.
	Tamper func(t testing.TB)
}

// NewFunc returns a fresh Instance, everything it made removed at cleanup.
type NewFunc func(t *testing.T) Instance

// Want is what Read should return for s.
func Want(s lb.State) map[string]Programmed {
	out := make(map[string]Programmed, len(s.Frontends))
	for _, f := range s.Frontends {
		bs := make([]string, 0, len(f.Backends))
		for _, b := range f.Backends {
			bs = append(bs, b.String())
		}
		slices.Sort(bs)
		out[f.Name] = Programmed{Key: lb.Key(f), Backends: bs, Masquerade: f.Masquerade}
	}
	return out
}

// anyPortBackend is a backend of an any-port VIP frontend.
func anyPortBackend(s string) lb.Backend { return lb.Backend{Addr: netip.MustParseAddr(s)} }

func mustBackend(s string) lb.Backend {
	ap := netip.MustParseAddrPort(s)
	return lb.Backend{Addr: ap.Addr(), Port: ap.Port()}
}

// conformanceState covers every kind of frontend: published TCP and UDP,
// with and without masquerade, without backends, IPv4 and IPv6 VIPs, and
// any-port VIPs (port 0, backends keep the destination port) beside a VIP
// on one port.
func conformanceState() lb.State {
	return lb.State{Frontends: []lb.Frontend{
		{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
			Backends: []lb.Backend{mustBackend("10.231.0.10:80"), mustBackend("10.231.0.11:80"), mustBackend("10.231.0.12:80")}},
		{Name: "svc:dns:5353/udp", Protocol: lb.UDP, Port: 5353, Masquerade: true,
			Backends: []lb.Backend{mustBackend("10.231.0.13:53")}},
		{Name: "svc:local:9000/tcp", Protocol: lb.TCP, Port: 9000,
			Backends: []lb.Backend{mustBackend("10.231.0.14:80")}},
		{Name: "svc:idle:9100/tcp", Protocol: lb.TCP, Port: 9100, Masquerade: true},
		{Name: "vip:web:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("10.231.9.2"),
			Backends: []lb.Backend{mustBackend("10.231.0.10:80"), mustBackend("10.231.0.11:80")}},
		{Name: "vip:v6:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("fd31::2"),
			Backends: []lb.Backend{mustBackend("[fd31::10]:80")}},
		{Name: "vip:any:tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("10.231.9.2"), Masquerade: true,
			Backends: []lb.Backend{anyPortBackend("10.231.0.12"), anyPortBackend("10.231.0.13")}},
		{Name: "vip:any:udp", Protocol: lb.UDP, VIP: netip.MustParseAddr("10.231.9.4"),
			Backends: []lb.Backend{anyPortBackend("10.231.0.12")}},
		{Name: "vip:any6:tcp", Protocol: lb.TCP, VIP: netip.MustParseAddr("fd31::3"),
			Backends: []lb.Backend{anyPortBackend("fd31::11")}},
	}}
}

func cloneState(s lb.State) lb.State {
	out := lb.State{Frontends: make([]lb.Frontend, len(s.Frontends))}
	for i, f := range s.Frontends {
		f.Backends = slices.Clone(f.Backends)
		out.Frontends[i] = f
	}
	return out
}

// change is one step of the update test: a mutation of the conformance
// state, index by frontend.
type change struct {
	name string
	mod  func(fs []lb.Frontend) []lb.Frontend
}

var changes = []change{
	{"add a backend", func(fs []lb.Frontend) []lb.Frontend {
		fs[0].Backends = append(fs[0].Backends, mustBackend("10.231.0.20:80"))
		return fs
	}},
	{"remove a backend", func(fs []lb.Frontend) []lb.Frontend { fs[0].Backends = fs[0].Backends[1:]; return fs }},
	{"replace a backend's port", func(fs []lb.Frontend) []lb.Frontend { fs[1].Backends[0].Port = 54; return fs }},
	{"remove every backend", func(fs []lb.Frontend) []lb.Frontend { fs[4].Backends = nil; return fs }},
	{"first backend of an idle frontend", func(fs []lb.Frontend) []lb.Frontend {
		fs[3].Backends = []lb.Backend{mustBackend("10.231.0.15:80")}
		return fs
	}},
	{"change the published port", func(fs []lb.Frontend) []lb.Frontend { fs[0].Port = 8081; return fs }},
	{"change the protocol", func(fs []lb.Frontend) []lb.Frontend { fs[2].Protocol = lb.UDP; return fs }},
	{"move a VIP", func(fs []lb.Frontend) []lb.Frontend { fs[4].VIP = netip.MustParseAddr("10.231.9.3"); return fs }},
	{"toggle masquerade", func(fs []lb.Frontend) []lb.Frontend {
		fs[0].Masquerade, fs[2].Masquerade = false, true
		return fs
	}},
	{"swap two frontends' ports", func(fs []lb.Frontend) []lb.Frontend {
		fs[0].Port, fs[2].Port = fs[2].Port, fs[0].Port
		return fs
	}},
	{"remove a frontend", func(fs []lb.Frontend) []lb.Frontend { return slices.Delete(fs, 1, 2) }},
	{"add a frontend", func(fs []lb.Frontend) []lb.Frontend {
		return append(fs, lb.Frontend{Name: "svc:new:7000/udp", Protocol: lb.UDP, Port: 7000, Masquerade: true,
			Backends: []lb.Backend{mustBackend("10.231.0.30:7000"), mustBackend("10.231.0.31:7000")}})
	}},
	{"reorder backends", func(fs []lb.Frontend) []lb.Frontend { slices.Reverse(fs[0].Backends); return fs }},
	{"add an any-port backend", func(fs []lb.Frontend) []lb.Frontend {
		fs[6].Backends = append(fs[6].Backends, anyPortBackend("10.231.0.14"))
		return fs
	}},
	{"remove every any-port backend", func(fs []lb.Frontend) []lb.Frontend { fs[7].Backends = nil; return fs }},
	{"any-port VIP becomes one port", func(fs []lb.Frontend) []lb.Frontend {
		fs[7].Port, fs[7].Backends = 53, []lb.Backend{mustBackend("10.231.0.12:53")}
		return fs
	}},
	{"one-port VIP becomes any-port", func(fs []lb.Frontend) []lb.Frontend {
		fs[4].Port, fs[4].VIP, fs[4].Backends = 0, netip.MustParseAddr("10.231.9.6"), []lb.Backend{anyPortBackend("10.231.0.10")}
		return fs
	}},
	{"move an any-port VIP", func(fs []lb.Frontend) []lb.Frontend { fs[6].VIP = netip.MustParseAddr("10.231.9.5"); return fs }},
}

// Run is the conformance suite: every lb.Balancer backend passes it, at
// whatever level it can be checked (the kernel for nftables, fakes for
// IPVS).
func Run(t *testing.T, newInstance NewFunc) {
	ctx := context.Background()
	check := func(t *testing.T, in Instance, s lb.State, what string) {
		t.Helper()
		got, want := in.Read(t), Want(s)
		if !maps.EqualFunc(got, want, func(a, b Programmed) bool { return a.String() == b.String() }) {
			t.Errorf("%s: programmed\n%s\nwant\n%s", what, describe(got), describe(want))
		}
	}
	apply := func(t *testing.T, in Instance, s lb.State) {
		t.Helper()
		if err := in.Balancer.Apply(ctx, s); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}

	t.Run("Program", func(t *testing.T) {
		in := newInstance(t)
		s := conformanceState()
		apply(t, in, s)
		check(t, in, s, "after the first Apply")
		apply(t, in, s)
		check(t, in, s, "after the same state again")
	})

	t.Run("Update", func(t *testing.T) {
		in := newInstance(t)
		s := conformanceState()
		apply(t, in, s)
		// Each change is applied on top of the previous ones, then undone:
		// both directions must come out exact.
		for _, c := range changes {
			t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
				next := lb.State{Frontends: c.mod(cloneState(s).Frontends)}
				apply(t, in, next)
				check(t, in, next, "after "+c.name)
				apply(t, in, s)
				check(t, in, s, "after undoing "+c.name)
			})
		}
		apply(t, in, lb.State{})
		check(t, in, lb.State{}, "after removing everything")
		apply(t, in, s)
		check(t, in, s, "after programming again")
	})

	t.Run("ResyncAfterError", func(t *testing.T) {
		in := newInstance(t)
		s := conformanceState()
		apply(t, in, s)
		next := lb.State{Frontends: changes[0].mod(cloneState(s).Frontends)}
		next.Frontends = slices.Delete(next.Frontends, 1, 2)
		in.Tamper(t)
		in.FailNext()
		if err := in.Balancer.Apply(ctx, next); err == nil {
			t.Fatal("Apply with a failure injected: nil error")
		}
		// The same state again: only a resync finds the tampering, since
		// nothing differs from what the balancer meant to program.
		apply(t, in, next)
		check(t, in, next, "after the retry")
		apply(t, in, s)
		check(t, in, s, "after the next change")
	})

	t.Run("InvalidStateChangesNothing", func(t *testing.T) {
		in := newInstance(t)
		s := conformanceState()
		apply(t, in, s)
		bad := []struct {
			name string
			mod  func(fs []lb.Frontend) []lb.Frontend
			want string
		}{
			{"backend port 0", func(fs []lb.Frontend) []lb.Frontend { fs[0].Backends[0].Port = 0; return fs }, "has port 0"},
			{"duplicate key", func(fs []lb.Frontend) []lb.Frontend { fs[2].Port = fs[0].Port; return fs }, "already balanced by"},
			{"unknown protocol", func(fs []lb.Frontend) []lb.Frontend { fs[1].Protocol = "sctp"; return fs }, `unknown protocol "sctp"`},
			{"mixed families", func(fs []lb.Frontend) []lb.Frontend {
				fs[0].Backends = append(fs[0].Backends, mustBackend("[fd31::11]:80"))
				return fs
			}, "mix IPv4 and IPv6"},
		}
		for _, b := range bad {
			t.Run(strings.ReplaceAll(b.name, " ", "_"), func(t *testing.T) {
				err := in.Balancer.Apply(ctx, lb.State{Frontends: b.mod(cloneState(s).Frontends)})
				if err == nil || !strings.Contains(err.Error(), b.want) {
					t.Fatalf("Apply: %v, want an error containing %q", err, b.want)
				}
				check(t, in, s, "after the refused state")
			})
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if err := in.Balancer.Apply(cancelled, lb.State{}); err == nil {
			t.Error("Apply with a cancelled context: nil error")
		}
		check(t, in, s, "after the cancelled Apply")
	})

	t.Run("CloseRemovesEverything", func(t *testing.T) {
		in := newInstance(t)
		s := conformanceState()
		apply(t, in, s)
		if err := in.Balancer.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if got := in.Read(t); len(got) != 0 {
			t.Errorf("after Close, still programmed:\n%s", describe(got))
		}
		if err := in.Balancer.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if err := in.Balancer.Apply(ctx, s); err == nil {
			t.Error("Apply after Close: nil error")
		}
		if got := in.Read(t); len(got) != 0 {
			t.Errorf("Apply after Close programmed:\n%s", describe(got))
		}
	})

	t.Run("CloseWithoutApply", func(t *testing.T) {
		in := newInstance(t)
		if err := in.Balancer.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if got := in.Read(t); len(got) != 0 {
			t.Errorf("after Close, programmed:\n%s", describe(got))
		}
	})
}

func describe(m map[string]Programmed) string {
	var b strings.Builder
	for _, n := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "  %s: %s\n", n, m[n])
	}
	return b.String()
}
