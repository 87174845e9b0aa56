package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/ipvs"

	"github.com/shoal-project/shoal/network/lb"
)

// fakeIPVS keeps fwmark services as the kernel does: by address family and
// mark, refusing what the kernel refuses.
type fakeIPVS struct {
	services map[svcKey]*fakeService
	failOn   string // an operation name that fails once
	calls    int
	// changes logs every successful change, "op mark [addr:port weight]".
	changes []string
}

type svcKey struct {
	family uint16
	mark   uint32
}

type fakeService struct {
	dests []*fakeDest // in the order added
}

type fakeDest struct {
	addr   string // "addr:port"
	weight int
	active int // connections the test says are established
}

func newFake() *fakeIPVS { return &fakeIPVS{services: map[svcKey]*fakeService{}} }

func (f *fakeIPVS) fail(op string) error {
	f.calls++
	if f.failOn == op {
		f.failOn = ""
		return fmt.Errorf("injected %s failure", op)
	}
	return nil
}

func keyOf(s *ipvs.Service) svcKey { return svcKey{s.AddressFamily, s.FWMark} }

func (f *fakeIPVS) NewService(s *ipvs.Service) error {
	if err := f.fail("NewService"); err != nil {
		return err
	}
	if s.SchedName != "rr" || s.FWMark == 0 {
		return fmt.Errorf("unexpected service %+v", s)
	}
	if s.AddressFamily == syscall.AF_INET6 && (s.Netmask < 1 || s.Netmask > 128) {
		return syscall.EINVAL // ip_vs_add_service: an IPv6 service needs a prefix length
	}
	if _, ok := f.services[keyOf(s)]; ok {
		return syscall.EEXIST
	}
	f.services[keyOf(s)] = &fakeService{}
	f.changes = append(f.changes, fmt.Sprintf("NewService %#x", s.FWMark))
	return nil
}

func (f *fakeIPVS) DelService(s *ipvs.Service) error {
	if err := f.fail("DelService"); err != nil {
		return err
	}
	if _, ok := f.services[keyOf(s)]; !ok {
		return syscall.ENOENT
	}
	delete(f.services, keyOf(s))
	f.changes = append(f.changes, fmt.Sprintf("DelService %#x", s.FWMark))
	return nil
}

func (f *fakeIPVS) GetServices() ([]*ipvs.Service, error) {
	if err := f.fail("GetServices"); err != nil {
		return nil, err
	}
	var out []*ipvs.Service
	for k := range f.services {
		out = append(out, &ipvs.Service{FWMark: k.mark, AddressFamily: k.family})
	}
	return out, nil
}

func dest(d *ipvs.Destination) string {
	a, _ := netip.AddrFromSlice(d.Address)
	return netip.AddrPortFrom(a.Unmap(), d.Port).String()
}

// find returns the service's real server d, or an error as the kernel's.
func (f *fakeIPVS) find(s *ipvs.Service, d *ipvs.Destination) (*fakeService, int, error) {
	svc, ok := f.services[keyOf(s)]
	if !ok {
		return nil, -1, syscall.ESRCH // the kernel's answer for a missing service
	}
	return svc, slices.IndexFunc(svc.dests, func(fd *fakeDest) bool { return fd.addr == dest(d) }), nil
}

func (f *fakeIPVS) NewDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if err := f.fail("NewDestination"); err != nil {
		return err
	}
	svc, i, err := f.find(s, d)
	if err != nil {
		return err
	}
	if d.ConnectionFlags != ipvs.ConnectionFlagMasq || d.Weight != 1 {
		return fmt.Errorf("unexpected destination %+v", d)
	}
	if i >= 0 {
		return syscall.EEXIST
	}
	svc.dests = append(svc.dests, &fakeDest{addr: dest(d), weight: d.Weight})
	f.changes = append(f.changes, fmt.Sprintf("NewDestination %#x %s %d", s.FWMark, dest(d), d.Weight))
	return nil
}

func (f *fakeIPVS) UpdateDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if err := f.fail("UpdateDestination"); err != nil {
		return err
	}
	svc, i, err := f.find(s, d)
	if err != nil {
		return err
	}
	if i < 0 {
		return syscall.ENOENT
	}
	if d.ConnectionFlags != ipvs.ConnectionFlagMasq || (d.Weight != 0 && d.Weight != 1) {
		return fmt.Errorf("unexpected destination %+v", d)
	}
	svc.dests[i].weight = d.Weight
	f.changes = append(f.changes, fmt.Sprintf("UpdateDestination %#x %s %d", s.FWMark, dest(d), d.Weight))
	return nil
}

func (f *fakeIPVS) DelDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if err := f.fail("DelDestination"); err != nil {
		return err
	}
	svc, i, err := f.find(s, d)
	if err != nil {
		return err
	}
	if i < 0 {
		return syscall.ENOENT
	}
	svc.dests = slices.Delete(svc.dests, i, i+1)
	f.changes = append(f.changes, fmt.Sprintf("DelDestination %#x %s", s.FWMark, dest(d)))
	return nil
}

func (f *fakeIPVS) GetDestinations(s *ipvs.Service) ([]*ipvs.Destination, error) {
	if err := f.fail("GetDestinations"); err != nil {
		return nil, err
	}
	svc, ok := f.services[keyOf(s)]
	if !ok {
		return nil, syscall.ESRCH
	}
	var out []*ipvs.Destination
	for _, d := range svc.dests {
		ap := netip.MustParseAddrPort(d.addr)
		out = append(out, &ipvs.Destination{Address: ap.Addr().AsSlice(), Port: ap.Port(), Weight: d.weight, ActiveConnections: d.active})
	}
	return out, nil
}

// serving returns the real servers of the service with mark that get new
// connections (weight > 0), sorted, and whether the service exists.
func (f *fakeIPVS) serving(mark uint32) ([]string, bool) {
	var out []string
	found := false
	for k, svc := range f.services {
		if k.mark != mark {
			continue
		}
		found = true
		for _, d := range svc.dests {
			if d.weight > 0 {
				out = append(out, d.addr)
			}
		}
	}
	slices.Sort(out)
	return out, found
}

// dest returns the real server addr of the service with mark, or nil.
func (f *fakeIPVS) dest(mark uint32, addr string) *fakeDest {
	for k, svc := range f.services {
		if k.mark != mark {
			continue
		}
		for _, d := range svc.dests {
			if d.addr == addr {
				return d
			}
		}
	}
	return nil
}

type fakeMarker struct {
	marks     []Mark
	closed    bool
	fail      bool
	readFails bool
}

func (m *fakeMarker) SetMarks(_ context.Context, ms []Mark) error {
	if m.fail {
		m.fail = false
		return errors.New("injected marker failure")
	}
	m.marks = ms
	return nil
}

func (m *fakeMarker) Close() error { m.closed, m.marks = true, nil; return nil }

// ProgrammedMarks is what a marker's table would hold: the last marks set.
func (m *fakeMarker) ProgrammedMarks() ([]Mark, error) {
	if m.readFails {
		return nil, errors.New("injected read failure")
	}
	return slices.Clone(m.marks), nil
}

// programmed reads back what the fakes hold, as frontend name -> sorted
// backends that get new connections.
func programmed(t *testing.T, f *fakeIPVS, m *fakeMarker) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, mk := range m.marks {
		ds, ok := f.serving(mk.Mark)
		if !ok {
			t.Errorf("frontend %q marked %#x but no IPVS service has that mark", mk.Frontend.Name, mk.Mark)
			continue
		}
		if ds == nil {
			ds = []string{}
		}
		out[mk.Frontend.Name] = ds
	}
	if len(f.services) != len(m.marks) {
		t.Errorf("%d IPVS services for %d marks", len(f.services), len(m.marks))
	}
	return out
}

// newTestBalancer is a Balancer on fakes without the background reaper
// (tests call reap with the time they choose) and with a clock that stands
// still at clockStart unless a test moves it.
func newTestBalancer(f *fakeIPVS, m Marker) *Balancer {
	b := New(f, m)
	b.reapEvery = 0
	b.now = func() time.Time { return clockStart }
	return b
}

var clockStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func be(s string) lb.Backend {
	ap := netip.MustParseAddrPort(s)
	return lb.Backend{Addr: ap.Addr(), Port: ap.Port()}
}

func TestApply(t *testing.T) {
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
		Backends: []lb.Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}}
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53, Backends: []lb.Backend{be("10.0.0.4:53")}}
	vip := lb.Frontend{Name: "vip:web:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("10.1.0.2"),
		Backends: []lb.Backend{be("10.0.0.2:80")}}
	with := func(f lb.Frontend, bs ...lb.Backend) lb.Frontend { f.Backends = bs; return f }

	steps := []struct {
		name   string
		state  []lb.Frontend
		inject func(*fakeIPVS, *fakeMarker)
		err    string
		want   map[string][]string // nil: not checked (after an error)
	}{
		{name: "program", state: []lb.Frontend{web, dns, vip}, want: map[string][]string{
			web.Name: {"10.0.0.2:80", "10.0.0.3:80"}, dns.Name: {"10.0.0.4:53"}, vip.Name: {"10.0.0.2:80"}}},
		{name: "add and remove a backend", state: []lb.Frontend{with(web, be("10.0.0.3:80"), be("10.0.0.5:80")), dns, vip}, want: map[string][]string{
			web.Name: {"10.0.0.3:80", "10.0.0.5:80"}, dns.Name: {"10.0.0.4:53"}, vip.Name: {"10.0.0.2:80"}}},
		{name: "remove a frontend", state: []lb.Frontend{web, vip}, want: map[string][]string{
			web.Name: {"10.0.0.2:80", "10.0.0.3:80"}, vip.Name: {"10.0.0.2:80"}}},
		{name: "no backends", state: []lb.Frontend{with(web), vip}, want: map[string][]string{web.Name: {}, vip.Name: {"10.0.0.2:80"}}},
		{name: "failure", state: []lb.Frontend{web, dns, vip}, inject: func(f *fakeIPVS, _ *fakeMarker) { f.failOn = "NewDestination" },
			err: "injected NewDestination failure"},
		{name: "resync after failure", state: []lb.Frontend{web, dns, vip}, want: map[string][]string{
			web.Name: {"10.0.0.2:80", "10.0.0.3:80"}, dns.Name: {"10.0.0.4:53"}, vip.Name: {"10.0.0.2:80"}}},
		{name: "marker failure", state: []lb.Frontend{web}, inject: func(_ *fakeIPVS, m *fakeMarker) { m.fail = true },
			err: "set firewall marks: injected marker failure"},
		{name: "resync after marker failure", state: []lb.Frontend{web}, want: map[string][]string{web.Name: {"10.0.0.2:80", "10.0.0.3:80"}}},
		{name: "invalid state changes nothing", state: []lb.Frontend{web, with(dns, be("10.0.0.4:0"))},
			err: `frontend "svc:dns:53/udp": backend 10.0.0.4 has port 0`, want: map[string][]string{web.Name: {"10.0.0.2:80", "10.0.0.3:80"}}},
	}
	f, m := newFake(), &fakeMarker{}
	// A service outside the balancer's mark range belongs to someone else.
	foreignKey := svcKey{syscall.AF_INET, 7}
	f.services[foreignKey] = &fakeService{dests: []*fakeDest{{addr: "192.0.2.1:1", weight: 1}}}
	b := newTestBalancer(f, m)
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.inject != nil {
				st.inject(f, m)
			}
			err := b.Apply(context.Background(), lb.State{Frontends: st.state})
			switch {
			case st.err == "" && err != nil:
				t.Fatalf("Apply: %v", err)
			case st.err != "" && (err == nil || !strings.Contains(err.Error(), st.err)):
				t.Fatalf("Apply: %v, want error containing %q", err, st.err)
			}
			if st.want == nil {
				return
			}
			foreign := f.services[foreignKey]
			delete(f.services, foreignKey)
			got := programmed(t, f, m)
			f.services[foreignKey] = foreign
			if fmt.Sprint(got) != fmt.Sprint(st.want) {
				t.Errorf("programmed %v\nwant %v", got, st.want)
			}
		})
	}
	t.Run("marks are stable", func(t *testing.T) {
		before := map[string]uint32{}
		for _, mk := range m.marks {
			before[mk.Frontend.Name] = mk.Mark
		}
		if err := b.Apply(context.Background(), lb.State{Frontends: []lb.Frontend{dns, web}}); err != nil {
			t.Fatal(err)
		}
		for _, mk := range m.marks {
			if old, ok := before[mk.Frontend.Name]; ok && old != mk.Mark {
				t.Errorf("frontend %q moved from mark %#x to %#x", mk.Frontend.Name, old, mk.Mark)
			}
			if mk.Mark < FirstMark || mk.Mark >= FirstMark+MaxMarks {
				t.Errorf("mark %#x outside the balancer's range", mk.Mark)
			}
			if want := map[string]lb.Frontend{dns.Name: dns, web.Name: web}[mk.Frontend.Name]; !slices.Equal(mk.Frontend.Backends, want.Backends) {
				t.Errorf("marker given backends %v for %q, want %v (for the hairpin sets)", mk.Frontend.Backends, mk.Frontend.Name, want.Backends)
			}
		}
	})
	t.Run("one change is one call", func(t *testing.T) {
		f.calls = 0
		if err := b.Apply(context.Background(), lb.State{Frontends: []lb.Frontend{dns, with(web, be("10.0.0.2:80"))}}); err != nil {
			t.Fatal(err)
		}
		if f.calls != 1 {
			t.Errorf("%d IPVS calls for one removed backend, want 1", f.calls)
		}
	})
	t.Run("close removes only its services", func(t *testing.T) {
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if len(f.services) != 1 || f.services[foreignKey] == nil {
			t.Errorf("services after Close: %v, want only the foreign one", f.services)
		}
		if !m.closed {
			t.Error("marker not closed")
		}
		if err := b.Apply(context.Background(), lb.State{}); err == nil {
			t.Error("Apply after Close: nil error")
		}
	})
}

func TestAvailable(t *testing.T) {
	// The IPVS module creates /proc/net/ip_vs when it loads; asking for the
	// generic netlink family loads it if the kernel has it at all.
	got := Available()
	_, err := os.Stat("/proc/net/ip_vs")
	if want := err == nil; got != want {
		t.Errorf("Available() = %v, but /proc/net/ip_vs exists = %v", got, want)
	}
}

// markOf returns the mark the fake marker holds for frontend name.
func markOf(t *testing.T, m *fakeMarker, name string) uint32 {
	t.Helper()
	for _, mk := range m.marks {
		if mk.Frontend.Name == name {
			return mk.Mark
		}
	}
	t.Fatalf("no mark for frontend %q", name)
	return 0
}

// TestRemovedBackends follows backends that leave their frontends: a TCP
// backend is quiesced (weight 0: no new connection, its open ones go on, as
// the drain needs) and deleted once it has no active connection or after
// maxQuiesce; a UDP backend is deleted at once.
func TestRemovedBackends(t *testing.T) {
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
		Backends: []lb.Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}}
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53,
		Backends: []lb.Backend{be("10.0.0.4:53"), be("10.0.0.5:53")}}
	with := func(f lb.Frontend, bs ...lb.Backend) lb.Frontend { f.Backends = bs; return f }
	apply := func(t *testing.T, b *Balancer, fs ...lb.Frontend) {
		t.Helper()
		if err := b.Apply(context.Background(), lb.State{Frontends: fs}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	reap := func(b *Balancer, after time.Duration) {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.reap(clockStart.Add(after))
	}
	// start programs both frontends, then removes 10.0.0.3 from web and
	// 10.0.0.5 from dns.
	start := func(t *testing.T) (*fakeIPVS, *fakeMarker, *Balancer) {
		f, m := newFake(), &fakeMarker{}
		b := newTestBalancer(f, m)
		apply(t, b, web, dns)
		apply(t, b, with(web, be("10.0.0.2:80")), with(dns, be("10.0.0.4:53")))
		return f, m, b
	}

	t.Run("TCP backend quiesced, UDP backend deleted", func(t *testing.T) {
		f, m, _ := start(t)
		if d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80"); d == nil || d.weight != 0 {
			t.Errorf("removed TCP backend: %+v, want it kept with weight 0", d)
		}
		if d := f.dest(markOf(t, m, dns.Name), "10.0.0.5:53"); d != nil {
			t.Errorf("removed UDP backend still a real server: %+v", d)
		}
		if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:dns:53/udp:[10.0.0.4:53] svc:web:8080/tcp:[10.0.0.2:80]]" {
			t.Errorf("serving %s", got)
		}
	})
	t.Run("kept while it has connections", func(t *testing.T) {
		f, m, b := start(t)
		d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80")
		if d == nil {
			t.Fatal("removed TCP backend not kept")
		}
		d.active = 2
		reap(b, maxQuiesce-time.Second)
		if f.dest(markOf(t, m, web.Name), "10.0.0.3:80") == nil {
			t.Fatal("quiesced backend with active connections deleted before maxQuiesce")
		}
		reap(b, maxQuiesce)
		if f.dest(markOf(t, m, web.Name), "10.0.0.3:80") != nil {
			t.Error("quiesced backend kept after maxQuiesce")
		}
		if len(b.quiesced) != 0 {
			t.Errorf("still quiesced: %v", b.quiesced)
		}
	})
	t.Run("deleted once its connections are gone", func(t *testing.T) {
		f, m, b := start(t)
		reap(b, time.Second)
		if d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80"); d != nil {
			t.Errorf("quiesced backend without connections kept: %+v", d)
		}
		f.calls = 0
		reap(b, 2*time.Second)
		if f.calls != 0 {
			t.Errorf("%d IPVS calls with nothing quiesced, want 0", f.calls)
		}
	})
	t.Run("restored when it comes back", func(t *testing.T) {
		f, m, b := start(t)
		apply(t, b, web, dns)
		for _, mk := range []struct{ frontend, addr string }{{web.Name, "10.0.0.3:80"}, {dns.Name, "10.0.0.5:53"}} {
			if d := f.dest(markOf(t, m, mk.frontend), mk.addr); d == nil || d.weight != 1 {
				t.Errorf("backend %s of %s back: %+v, want weight 1", mk.addr, mk.frontend, d)
			}
		}
		reap(b, maxQuiesce)
		if d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80"); d == nil {
			t.Error("the reaper deleted a backend that serves again")
		}
	})
	t.Run("gone with its frontend", func(t *testing.T) {
		f, _, b := start(t)
		apply(t, b, dns)
		if len(b.quiesced) != 0 {
			t.Errorf("quiesced after its frontend went: %v", b.quiesced)
		}
		f.calls = 0
		reap(b, maxQuiesce)
		if f.calls != 0 {
			t.Errorf("%d IPVS calls for a removed frontend's backends, want 0", f.calls)
		}
	})
	t.Run("a failed listing is retried", func(t *testing.T) {
		f, m, b := start(t)
		f.failOn = "GetDestinations"
		reap(b, time.Second)
		if f.dest(markOf(t, m, web.Name), "10.0.0.3:80") == nil {
			t.Fatal("deleted without knowing its connections")
		}
		reap(b, 2*time.Second)
		if d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80"); d != nil {
			t.Errorf("kept after the retry: %+v", d)
		}
	})
	t.Run("deleted by someone else", func(t *testing.T) {
		f, m, b := start(t)
		svc := service(markOf(t, m, web.Name), syscall.AF_INET)
		if err := f.DelDestination(svc, destination(be("10.0.0.3:80"), 0)); err != nil {
			t.Fatal(err)
		}
		reap(b, time.Second)
		if len(b.quiesced) != 0 {
			t.Errorf("still quiesced: %v", b.quiesced)
		}
	})
}

// TestBackgroundReaper runs the reaper on its timer: a quiesced backend
// without connections goes without another Apply, and Close stops it.
func TestBackgroundReaper(t *testing.T) {
	f, m := newFake(), &fakeMarker{}
	b := newTestBalancer(f, m)
	b.reapEvery = time.Millisecond
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: []lb.Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}}
	for _, bs := range [][]lb.Backend{web.Backends, web.Backends[:1]} {
		web.Backends = bs
		if err := b.Apply(context.Background(), lb.State{Frontends: []lb.Frontend{web}}); err != nil {
			t.Fatal(err)
		}
	}
	// Bounds a wait for a timer of a millisecond; only a hang fails.
	deadline := time.Now().Add(10 * time.Second)
	for {
		b.mu.Lock()
		gone := f.dest(markOf(t, m, web.Name), "10.0.0.3:80") == nil
		b.mu.Unlock()
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the background reaper did not delete the quiesced backend")
		}
		time.Sleep(time.Millisecond)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.reapTimer != nil {
		t.Error("a reaper timer is left after Close")
	}
}

func TestServices(t *testing.T) {
	v6 := lb.Frontend{Name: "svc:v6:8080/tcp", Protocol: lb.TCP, Port: 8080, Backends: []lb.Backend{be("[fd00::2]:80")}}
	a := lb.Frontend{Name: "svc:a:1/tcp", Protocol: lb.TCP, Port: 1, Backends: []lb.Backend{be("10.0.0.2:80")}}
	bFe := lb.Frontend{Name: "svc:b:2/tcp", Protocol: lb.TCP, Port: 2, Backends: []lb.Backend{be("10.0.0.3:80")}}
	apply := func(t *testing.T, b *Balancer, fs ...lb.Frontend) {
		t.Helper()
		if err := b.Apply(context.Background(), lb.State{Frontends: fs}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	t.Run("an IPv6 frontend keeps its family without backends", func(t *testing.T) {
		f, m := newFake(), &fakeMarker{}
		b := newTestBalancer(f, m)
		apply(t, b, v6)
		idle := v6
		idle.Backends = nil
		apply(t, b, idle)
		if d := f.dest(markOf(t, m, v6.Name), "[fd00::2]:80"); d == nil || d.weight != 0 {
			t.Errorf("backend of the IPv6 service: %+v, want it quiesced", d)
		}
		if _, ok := f.services[svcKey{syscall.AF_INET6, markOf(t, m, v6.Name)}]; !ok || len(f.services) != 1 {
			t.Errorf("services %v, want the IPv6 one only", f.services)
		}
	})
	t.Run("backends that change family get a new service", func(t *testing.T) {
		f, m := newFake(), &fakeMarker{}
		b := newTestBalancer(f, m)
		v4 := v6
		v4.Backends = []lb.Backend{be("10.0.0.2:80")}
		apply(t, b, v4)
		apply(t, b, v6)
		if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:v6:8080/tcp:[[fd00::2]:80]]" {
			t.Errorf("serving %s", got)
		}
		if _, ok := f.services[svcKey{syscall.AF_INET6, markOf(t, m, v6.Name)}]; !ok {
			t.Errorf("services %v, want an IPv6 one", f.services)
		}
	})
	t.Run("a new frontend does not take the mark of one removed in the same Apply", func(t *testing.T) {
		f, m := newFake(), &fakeMarker{}
		b := newTestBalancer(f, m)
		apply(t, b, a)
		apply(t, b, bFe)
		if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:b:2/tcp:[10.0.0.3:80]]" {
			t.Errorf("serving %s", got)
		}
	})
}

// TestForgetsUDPFlows checks which conntrack flows the balancer asks to
// forget: those of UDP backends that left their frontend, or whose frontend
// moved or went; never TCP ones (their connections drain).
func TestForgetsUDPFlows(t *testing.T) {
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53,
		Backends: []lb.Backend{be("10.0.0.4:53"), be("10.0.0.5:53")}}
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080,
		Backends: []lb.Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}}
	with := func(f lb.Frontend, mod func(*lb.Frontend)) lb.Frontend {
		f.Backends = slices.Clone(f.Backends)
		mod(&f)
		return f
	}
	tests := []struct {
		name string
		next []lb.Frontend
		want []string // "key: backends" of each forget call
	}{
		{"nothing changes", []lb.Frontend{dns, web}, nil},
		{"a UDP backend leaves", []lb.Frontend{with(dns, func(f *lb.Frontend) { f.Backends = f.Backends[1:] }), web},
			[]string{"published 53/udp: [10.0.0.4:53]"}},
		{"a TCP backend leaves", []lb.Frontend{dns, with(web, func(f *lb.Frontend) { f.Backends = f.Backends[1:] })}, nil},
		{"the UDP port moves", []lb.Frontend{with(dns, func(f *lb.Frontend) { f.Port = 54 }), web},
			[]string{"published 53/udp: [10.0.0.4:53 10.0.0.5:53]"}},
		{"the UDP frontend goes", []lb.Frontend{web}, []string{"published 53/udp: [10.0.0.4:53 10.0.0.5:53]"}},
		{"the TCP frontend goes", []lb.Frontend{dns}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newTestBalancer(newFake(), &fakeMarker{})
			var got []string
			b.forgetUDP = func(f lb.Frontend, gone []lb.Backend) { got = append(got, fmt.Sprintf("%s: %v", lb.Key(f), gone)) }
			for _, s := range [][]lb.Frontend{{dns, web}, tc.next} {
				if err := b.Apply(context.Background(), lb.State{Frontends: s}); err != nil {
					t.Fatal(err)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("forgot %q, want %q", got, tc.want)
			}
		})
	}
}

// TestRestartKeepsServices starts a second balancer on the kernel state
// (and marker table) a first one left, as shoald does after a restart: what
// is right stays, so connections through it go on, and only differences
// are changed.
func TestRestartKeepsServices(t *testing.T) {
	web := lb.Frontend{Name: "svc:web:8080/tcp", Protocol: lb.TCP, Port: 8080, Masquerade: true,
		Backends: []lb.Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}}
	dns := lb.Frontend{Name: "svc:dns:53/udp", Protocol: lb.UDP, Port: 53, Backends: []lb.Backend{be("10.0.0.4:53")}}
	v6 := lb.Frontend{Name: "vip:v6:80/tcp", Protocol: lb.TCP, Port: 80, VIP: netip.MustParseAddr("fd00::1"),
		Backends: []lb.Backend{be("[fd00::2]:80")}}
	with := func(f lb.Frontend, bs ...lb.Backend) lb.Frontend { f.Backends = bs; return f }
	apply := func(t *testing.T, b *Balancer, fs ...lb.Frontend) {
		t.Helper()
		if err := b.Apply(context.Background(), lb.State{Frontends: fs}); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	}
	// run programs first with one balancer, then restarts on the same
	// fakes and applies second; it returns the changes the restart made.
	run := func(t *testing.T, first, second []lb.Frontend, between func(*fakeIPVS, *fakeMarker)) (*fakeIPVS, *fakeMarker, []string) {
		t.Helper()
		f, m := newFake(), &fakeMarker{}
		apply(t, newTestBalancer(f, m), first...)
		if between != nil {
			between(f, m)
		}
		f.changes = nil
		apply(t, newTestBalancer(f, m), second...)
		return f, m, f.changes
	}
	t.Run("same state changes nothing", func(t *testing.T) {
		f, m, changes := run(t, []lb.Frontend{web, dns, v6}, []lb.Frontend{web, dns, v6}, nil)
		if len(changes) != 0 {
			t.Errorf("restart changed %q, want nothing", changes)
		}
		if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:dns:53/udp:[10.0.0.4:53] svc:web:8080/tcp:[10.0.0.2:80 10.0.0.3:80] vip:v6:80/tcp:[[fd00::2]:80]]" {
			t.Errorf("serving %s", got)
		}
	})
	t.Run("changes made while down", func(t *testing.T) {
		_, m, changes := run(t, []lb.Frontend{web, dns}, []lb.Frontend{with(web, be("10.0.0.2:80"), be("10.0.0.9:80")), with(dns)}, nil)
		mw, md := markOf(t, m, web.Name), markOf(t, m, dns.Name)
		want := []string{
			fmt.Sprintf("NewDestination %#x 10.0.0.9:80 1", mw),
			// What goes, after the marks, by frontend name.
			fmt.Sprintf("DelDestination %#x 10.0.0.4:53", md),
			fmt.Sprintf("UpdateDestination %#x 10.0.0.3:80 0", mw),
		}
		if !slices.Equal(changes, want) {
			t.Errorf("restart changed %q, want %q", changes, want)
		}
	})
	t.Run("a backend quiesced before comes back", func(t *testing.T) {
		_, m, changes := run(t, []lb.Frontend{web}, []lb.Frontend{web}, func(f *fakeIPVS, m *fakeMarker) {
			b := newTestBalancer(f, m)
			apply(t, b, with(web, be("10.0.0.2:80")))
		})
		if want := []string{fmt.Sprintf("UpdateDestination %#x 10.0.0.3:80 1", markOf(t, m, web.Name))}; !slices.Equal(changes, want) {
			t.Errorf("restart changed %q, want %q", changes, want)
		}
	})
	t.Run("a backend quiesced before is reaped", func(t *testing.T) {
		f, m := newFake(), &fakeMarker{}
		apply(t, newTestBalancer(f, m), web)
		apply(t, newTestBalancer(f, m), with(web, be("10.0.0.2:80")))
		b := newTestBalancer(f, m)
		apply(t, b, with(web, be("10.0.0.2:80")))
		b.mu.Lock()
		b.reap(clockStart.Add(time.Second))
		b.mu.Unlock()
		if d := f.dest(markOf(t, m, web.Name), "10.0.0.3:80"); d != nil {
			t.Errorf("quiesced backend left by the earlier run kept: %+v", d)
		}
	})
	for _, c := range []struct {
		name string
		lose func(*fakeMarker)
	}{
		{"the marks are lost", func(m *fakeMarker) { m.marks = nil }},
		{"the marks cannot be read", func(m *fakeMarker) { m.readFails = true }},
	} {
		t.Run(c.name+": services are rebuilt", func(t *testing.T) {
			f, m, changes := run(t, []lb.Frontend{web}, []lb.Frontend{web}, func(_ *fakeIPVS, m *fakeMarker) { c.lose(m) })
			if len(changes) == 0 || !strings.HasPrefix(changes[0], "DelService") {
				t.Errorf("restart changed %q, want the orphaned service deleted first", changes)
			}
			if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:web:8080/tcp:[10.0.0.2:80 10.0.0.3:80]]" {
				t.Errorf("serving %s", got)
			}
		})
	}
	t.Run("another frontend's service in the range is deleted", func(t *testing.T) {
		f, m, changes := run(t, []lb.Frontend{web}, []lb.Frontend{web}, func(f *fakeIPVS, _ *fakeMarker) {
			f.services[svcKey{syscall.AF_INET, FirstMark + 77}] = &fakeService{}
		})
		if want := []string{fmt.Sprintf("DelService %#x", FirstMark+77)}; !slices.Equal(changes, want) {
			t.Errorf("restart changed %q, want %q", changes, want)
		}
		if got := fmt.Sprint(programmed(t, f, m)); got != "map[svc:web:8080/tcp:[10.0.0.2:80 10.0.0.3:80]]" {
			t.Errorf("serving %s", got)
		}
	})
}
