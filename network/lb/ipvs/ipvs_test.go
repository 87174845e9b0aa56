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

	"github.com/moby/ipvs"

	"github.com/shoal-project/shoal/network/lb"
)

// fakeIPVS keeps services by mark, like the kernel keys fwmark services.
type fakeIPVS struct {
	services map[uint32][]string // mark -> "addr:port" of real servers
	failOn   string              // an operation name that fails once
	calls    int
}

func newFake() *fakeIPVS { return &fakeIPVS{services: map[uint32][]string{}} }

func (f *fakeIPVS) fail(op string) error {
	f.calls++
	if f.failOn == op {
		f.failOn = ""
		return fmt.Errorf("injected %s failure", op)
	}
	return nil
}

func (f *fakeIPVS) NewService(s *ipvs.Service) error {
	if err := f.fail("NewService"); err != nil {
		return err
	}
	if s.SchedName != "rr" || s.FWMark == 0 {
		return fmt.Errorf("unexpected service %+v", s)
	}
	if _, ok := f.services[s.FWMark]; ok {
		return syscall.EEXIST
	}
	f.services[s.FWMark] = []string{}
	return nil
}

func (f *fakeIPVS) DelService(s *ipvs.Service) error {
	if err := f.fail("DelService"); err != nil {
		return err
	}
	if _, ok := f.services[s.FWMark]; !ok {
		return syscall.ENOENT
	}
	delete(f.services, s.FWMark)
	return nil
}

func (f *fakeIPVS) GetServices() ([]*ipvs.Service, error) {
	if err := f.fail("GetServices"); err != nil {
		return nil, err
	}
	var out []*ipvs.Service
	for m := range f.services {
		out = append(out, &ipvs.Service{FWMark: m})
	}
	return out, nil
}

func dest(d *ipvs.Destination) string {
	a, _ := netip.AddrFromSlice(d.Address)
	return netip.AddrPortFrom(a, d.Port).String()
}

func (f *fakeIPVS) NewDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if err := f.fail("NewDestination"); err != nil {
		return err
	}
	ds, ok := f.services[s.FWMark]
	if !ok {
		return syscall.ENOENT
	}
	if d.ConnectionFlags != ipvs.ConnectionFlagMasq || d.Weight != 1 {
		return fmt.Errorf("unexpected destination %+v", d)
	}
	if slices.Contains(ds, dest(d)) {
		return syscall.EEXIST
	}
	f.services[s.FWMark] = append(ds, dest(d))
	return nil
}

func (f *fakeIPVS) DelDestination(s *ipvs.Service, d *ipvs.Destination) error {
	if err := f.fail("DelDestination"); err != nil {
		return err
	}
	ds := f.services[s.FWMark]
	i := slices.Index(ds, dest(d))
	if i < 0 {
		return syscall.ENOENT
	}
	f.services[s.FWMark] = slices.Delete(ds, i, i+1)
	return nil
}

type fakeMarker struct {
	marks  []Mark
	closed bool
	fail   bool
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

// programmed reads back what the fakes hold, as frontend name -> sorted
// backends.
func programmed(t *testing.T, f *fakeIPVS, m *fakeMarker) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, mk := range m.marks {
		ds, ok := f.services[mk.Mark]
		if !ok {
			t.Errorf("frontend %q marked %#x but no IPVS service has that mark", mk.Frontend.Name, mk.Mark)
			continue
		}
		out[mk.Frontend.Name] = slices.Sorted(slices.Values(ds))
	}
	if len(f.services) != len(m.marks) {
		t.Errorf("%d IPVS services for %d marks", len(f.services), len(m.marks))
	}
	return out
}

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
	f.services[7] = []string{"192.0.2.1:1"}
	b := New(f, m)
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
			foreign := f.services[7]
			delete(f.services, 7)
			got := programmed(t, f, m)
			f.services[7] = foreign
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
			if mk.Frontend.Backends != nil {
				t.Errorf("marker given backends for %q", mk.Frontend.Name)
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
		if len(f.services) != 1 || f.services[7] == nil {
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
