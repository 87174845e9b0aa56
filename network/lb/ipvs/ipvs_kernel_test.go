package ipvs

import (
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/moby/ipvs"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// The tests in this file need a kernel with IPVS. Without one they skip
// (fail with SHOAL_EXPECT_IPVS=1); the VM tier runs them from a test binary:
// go test -c ./network/lb/ipvs.

// flakyHandle fails its next NewDestination when told to, the way a kernel
// refusal would.
type flakyHandle struct {
	Handle
	failNext atomic.Bool
}

func (f *flakyHandle) NewDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if f.failNext.CompareAndSwap(true, false) {
		return errors.New("injected NewDestination failure")
	}
	return f.Handle.NewDestination(s, d)
}

// newKernelHandle opens an IPVS handle in the namespace name, closed at
// cleanup.
func newKernelHandle(t *testing.T, name string) *ipvs.Handle {
	t.Helper()
	h, err := ipvs.New("/run/netns/" + name)
	if err != nil {
		t.Fatalf("IPVS handle in %s: %v", name, err)
	}
	t.Cleanup(h.Close)
	return h
}

// TestKernelConformance runs the suite every backend passes against the
// kernel's IPVS and the marker's table, in a throwaway namespace per case.
func TestKernelConformance(t *testing.T) {
	lbtest.RequireIPVS(t, Available())
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		name, ns := lbtest.NewNetNS(t)
		h := newKernelHandle(t, name)
		if err := configure("/run/netns/"+name, h); err != nil {
			t.Fatal(err)
		}
		fh := &flakyHandle{Handle: h}
		b := New(fh, newTestMarker(t, ns))
		t.Cleanup(func() { b.Close() })
		rh := newKernelHandle(t, name) // the test's own, for reading and tampering
		return lbtest.Instance{
			Balancer: b,
			Read:     func(t testing.TB) map[string]lbtest.Programmed { return readKernel(t, ns, rh) },
			FailNext: func() { fh.failNext.Store(true) },
			Tamper: func(t testing.TB) {
				for _, s := range ourServices(t, rh) {
					ds, err := rh.GetDestinations(s)
					if err != nil {
						t.Fatal(err)
					}
					for _, d := range ds {
						if err := rh.DelDestination(s, d); err != nil {
							t.Fatalf("delete real server %s of mark %#x: %v", d.Address, s.FWMark, err)
						}
					}
				}
			},
		}
	})
}

// ipvsReader is the part of a Handle readKernel needs.
type ipvsReader interface {
	GetServices() ([]*ipvs.Service, error)
	GetDestinations(*ipvs.Service) ([]*ipvs.Destination, error)
}

// ourServices lists the IPVS services in the balancer's mark range.
func ourServices(t testing.TB, h ipvsReader) []*ipvs.Service {
	t.Helper()
	svcs, err := h.GetServices()
	if err != nil {
		t.Fatalf("list IPVS services: %v", err)
	}
	return slices.DeleteFunc(svcs, func(s *ipvs.Service) bool { return s.FWMark < FirstMark || s.FWMark >= FirstMark+MaxMarks })
}

// readKernel reads back what the kernel holds: each element of the
// marker's maps (named by its comment), with the real servers of its mark's
// IPVS service that get new connections. An IPVS service no element leads
// to is reported under a name of its own, so a leftover fails the suite.
func readKernel(t testing.TB, ns netns.NsHandle, h ipvsReader) map[string]lbtest.Programmed {
	t.Helper()
	serving := map[uint32][]string{}
	for _, s := range ourServices(t, h) {
		ds, err := h.GetDestinations(s)
		if err != nil {
			t.Fatalf("real servers of mark %#x: %v", s.FWMark, err)
		}
		serving[s.FWMark] = []string{}
		for _, d := range ds {
			if d.Weight > 0 {
				a, _ := netip.AddrFromSlice(d.Address)
				serving[s.FWMark] = append(serving[s.FWMark], lb.Backend{Addr: a.Unmap(), Port: d.Port}.String())
			}
		}
		slices.Sort(serving[s.FWMark])
	}
	out := map[string]lbtest.Programmed{}
	marked := map[uint32]bool{}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatalf("open nftables connection: %v", err)
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	if slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == testMarkTable }) {
		tbl := &nftables.Table{Name: testMarkTable, Family: nftables.TableFamilyINet}
		elements := func(set string) []nftables.SetElement {
			s, err := c.GetSetByName(tbl, set)
			if err != nil {
				t.Fatalf("set %s: %v", set, err)
			}
			es, err := c.GetSetElements(s)
			if err != nil {
				t.Fatalf("elements of set %s: %v", set, err)
			}
			return es
		}
		masq := map[uint32]bool{}
		for _, e := range elements(markSetMasquerade) {
			masq[binaryutil.NativeEndian.Uint32(e.Key)] = true
		}
		for _, set := range []string{dispatch.SetPublished, dispatch.SetVIP4, dispatch.SetVIP6, dispatch.SetVIP4Any, dispatch.SetVIP6Any} {
			for _, e := range elements(set) {
				proto, port, vip, err := dispatch.Decode(set, e.Key)
				if err != nil {
					t.Fatal(err)
				}
				p := map[uint8]lb.Protocol{6: lb.TCP, 17: lb.UDP}[proto]
				mark := binaryutil.NativeEndian.Uint32(e.Val)
				marked[mark] = true
				bs, ok := serving[mark]
				if !ok {
					bs = []string{fmt.Sprintf("no IPVS service for mark %#x", mark)}
				}
				out[e.Comment] = lbtest.Programmed{Key: lb.Key(lb.Frontend{Protocol: p, Port: port, VIP: vip}), Backends: bs, Masquerade: masq[mark]}
			}
		}
	}
	for mark, bs := range serving {
		if !marked[mark] {
			out[fmt.Sprintf("unmarked IPVS service %#x", mark)] = lbtest.Programmed{Backends: bs}
		}
	}
	return out
}

// TestKernelConformanceMarker runs the conformance suite with the real
// marker and fake IPVS, reading back as TestKernelConformance does: the
// marker half of that test on any kernel with nftables.
func TestKernelConformanceMarker(t *testing.T) {
	lbtest.RequireRoot(t)
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		_, ns := lbtest.NewNetNS(t)
		f := newFake()
		b := newTestBalancer(f, newTestMarker(t, ns))
		t.Cleanup(func() { b.Close() })
		return lbtest.Instance{
			Balancer: b,
			Read:     func(t testing.TB) map[string]lbtest.Programmed { return readKernel(t, ns, f) },
			FailNext: func() { f.failOn = "NewDestination" },
			Tamper: func(testing.TB) {
				for _, svc := range f.services {
					svc.dests = nil
				}
			},
		}
	})
}

// TestKernelTraffic runs the traffic suite every backend passes through
// the kernel's IPVS.
func TestKernelTraffic(t *testing.T) {
	lbtest.RequireIPVS(t, Available())
	lbtest.RunTraffic(t, func(t *testing.T, tp *lbtest.Topology) lb.Balancer {
		b, err := NewKernel("/run/netns/"+tp.Router, WithMarkTable(testMarkTable))
		if err != nil {
			t.Fatalf("NewKernel: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	})
}

// TestKernelNewKernelSetsIPVSUp checks the namespace's IPVS settings after
// NewKernel: the sysctls, and the timeouts at conntrack's.
func TestKernelNewKernelSetsIPVSUp(t *testing.T) {
	lbtest.RequireIPVS(t, Available())
	name, _ := lbtest.NewNetNS(t)
	b, err := NewKernel("/run/netns/"+name, WithMarkTable(testMarkTable))
	if err != nil {
		t.Fatalf("NewKernel: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	read := func(path string) string {
		out, err := exec.Command("ip", "netns", "exec", name, "cat", path).CombinedOutput()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	for path, want := range map[string]string{
		"/proc/sys/net/ipv4/vs/conntrack":                 "1",
		"/proc/sys/net/ipv4/vs/expire_nodest_conn":        "1",
		"/proc/sys/net/ipv4/vs/expire_quiescent_template": "1",
		"/proc/sys/net/ipv4/vs/conn_reuse_mode":           "1",
	} {
		if got := read(path); got != want {
			t.Errorf("%s in the namespace = %q, want %q", path, got, want)
		}
	}
	cfg, err := newKernelHandle(t, name).GetConfig()
	if err != nil {
		t.Fatalf("IPVS GetConfig: %v", err)
	}
	wantTCP, wantUDP := defaultCTTCPEstablished, defaultCTUDPStream
	if v := read(ctTCPEstablished); v != "" {
		d, _ := time.ParseDuration(v + "s")
		wantTCP = d
	}
	if v := read(ctUDPStream); v != "" {
		d, _ := time.ParseDuration(v + "s")
		wantUDP = d
	}
	if cfg.TimeoutTCP != wantTCP || cfg.TimeoutUDP != wantUDP {
		t.Errorf("IPVS timeouts TCP %s UDP %s, want conntrack's: TCP %s UDP %s", cfg.TimeoutTCP, cfg.TimeoutUDP, wantTCP, wantUDP)
	}
	if cfg.TimeoutTCP == 900*time.Second {
		t.Error("IPVS TCP timeout is still the kernel's 900 s")
	}
}

// TestKernelQuiesce checks quiescing on the kernel: a removed TCP backend
// stays a real server at weight 0, a removed UDP backend goes, and the
// reaper deletes the quiesced one once it has no active connection.
func TestKernelQuiesce(t *testing.T) {
	lbtest.RequireIPVS(t, Available())
	name, _ := lbtest.NewNetNS(t)
	b, err := NewKernel("/run/netns/"+name, WithMarkTable(testMarkTable))
	if err != nil {
		t.Fatalf("NewKernel: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	b.reapEvery = 0
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
		Backends: []lb.Backend{be("10.231.0.10:80"), be("10.231.0.11:80")}}
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53,
		Backends: []lb.Backend{be("10.231.0.10:53"), be("10.231.0.11:53")}}
	// Both backends, then the first of each: the frontends are copied
	// into each state when it is applied.
	for range 2 {
		if err := b.Apply(t.Context(), lb.State{Frontends: []lb.Frontend{web, dns}}); err != nil {
			t.Fatal(err)
		}
		web.Backends, dns.Backends = web.Backends[:1], dns.Backends[:1]
	}
	h := newKernelHandle(t, name)
	weights := func() map[string]int {
		out := map[string]int{}
		for _, s := range ourServices(t, h) {
			ds, err := h.GetDestinations(s)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				a, _ := netip.AddrFromSlice(d.Address)
				out[netip.AddrPortFrom(a, d.Port).String()] = d.Weight
			}
		}
		return out
	}
	want := map[string]int{"10.231.0.10:80": 1, "10.231.0.11:80": 0, "10.231.0.10:53": 1}
	if got := weights(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("real servers after removing one backend of each: %v, want %v", got, want)
	}
	b.mu.Lock()
	b.reap(time.Now())
	b.mu.Unlock()
	delete(want, "10.231.0.11:80")
	if got := weights(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("real servers after reaping: %v, want %v", got, want)
	}
}
