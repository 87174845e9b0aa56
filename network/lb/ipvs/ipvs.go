package ipvs

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/network/lb"
)

// Handle is the part of a moby/ipvs handle the balancer uses; tests give it
// a fake.
type Handle interface {
	NewService(*ipvs.Service) error
	DelService(*ipvs.Service) error
	GetServices() ([]*ipvs.Service, error)
	NewDestination(*ipvs.Service, *ipvs.Destination) error
	DelDestination(*ipvs.Service, *ipvs.Destination) error
}

var _ Handle = (*ipvs.Handle)(nil)

// Mark asks for the packets of one frontend (matched on its published port
// or VIP) to carry a firewall mark, and to be masqueraded when the frontend
// says so. Frontend.Backends is not used.
type Mark struct {
	Frontend lb.Frontend
	Mark     uint32
}

// Marker programs the marks IPVS services select traffic by. SetMarks is
// given the whole set each time.
type Marker interface {
	SetMarks(ctx context.Context, marks []Mark) error
	Close() error
}

// Marks the balancer allocates, one per frontend. Swarm's ingress starts at
// 256 too; the range stays clear of the nft backend's masquerade bit (0x2000),
// and is whole blocks of 0x100 (see markBlock).
const (
	FirstMark uint32 = 0x100
	MaxMarks         = 0x1000
)

// scheduler is IPVS round robin, as Swarm's ingress uses.
const scheduler = "rr"

// Available reports whether the kernel has IPVS. It asks for the generic
// netlink family, because without it moby/ipvs reports success and does
// nothing.
func Available() bool {
	_, err := netlink.GenlFamilyGet("IPVS")
	return err == nil
}

// Balancer is the IPVS backend.
type Balancer struct {
	mu     sync.Mutex
	h      Handle
	marker Marker
	// marks stay with a frontend name for as long as it is programmed, so a
	// change never renumbers other frontends.
	marks      map[string]uint32
	programmed map[string]lb.Frontend
	dirty      bool
	closed     bool
}

var _ lb.Balancer = (*Balancer)(nil)

// New returns a Balancer programming IPVS through h and marks through m.
func New(h Handle, m Marker) *Balancer {
	return &Balancer{h: h, marker: m, marks: map[string]uint32{}, programmed: map[string]lb.Frontend{}, dirty: true}
}

// Apply programs s.
func (b *Balancer) Apply(ctx context.Context, s lb.State) error {
	if err := lb.Validate(s); err != nil {
		return fmt.Errorf("invalid load balancer state: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("ipvs balancer is closed")
	}
	if err := b.apply(ctx, s); err != nil {
		b.dirty = true
		return err
	}
	b.dirty = false
	return nil
}

func (b *Balancer) apply(ctx context.Context, s lb.State) error {
	desired := make(map[string]lb.Frontend, len(s.Frontends))
	for _, f := range s.Frontends {
		desired[f.Name] = f
	}
	if b.dirty {
		if err := b.removeAll(); err != nil {
			return err
		}
		b.programmed = map[string]lb.Frontend{}
	}
	prev, prevMarks := b.programmed, b.marks
	// Forget the marks of frontends that go, then give new ones the lowest
	// free marks.
	marks := map[string]uint32{}
	used := map[uint32]bool{}
	for n, m := range prevMarks {
		if _, ok := desired[n]; ok {
			marks[n], used[m] = m, true
		}
	}
	names := make([]string, 0, len(desired))
	for n := range desired {
		names = append(names, n)
	}
	slices.Sort(names)
	next := FirstMark
	for _, n := range names {
		if _, ok := marks[n]; ok {
			continue
		}
		for used[next] {
			next++
		}
		if next >= FirstMark+MaxMarks {
			return fmt.Errorf("frontend %q: more than %d frontends, no firewall mark left", n, MaxMarks)
		}
		marks[n], used[next] = next, true
	}

	// Services and real servers first, so marked packets always find one.
	for _, n := range names {
		f := desired[n]
		svc := service(marks[n], f)
		old, had := prev[n]
		if !had {
			if err := b.h.NewService(svc); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("create IPVS service for frontend %q (mark %#x): %w", n, marks[n], err)
			}
		}
		for _, be := range f.Backends {
			if had && slices.Contains(old.Backends, be) {
				continue
			}
			if err := b.h.NewDestination(svc, destination(be)); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("add backend %s to frontend %q: %w", be, n, err)
			}
		}
	}
	var ms []Mark
	for _, n := range names {
		f := desired[n]
		f.Backends = nil
		ms = append(ms, Mark{Frontend: f, Mark: marks[n]})
	}
	if err := b.marker.SetMarks(ctx, ms); err != nil {
		return fmt.Errorf("set firewall marks: %w", err)
	}
	// Then what goes: real servers no longer wanted, services of removed
	// frontends.
	for _, n := range names {
		f := desired[n]
		svc := service(marks[n], f)
		for _, be := range prev[n].Backends {
			if slices.Contains(f.Backends, be) {
				continue
			}
			if err := b.h.DelDestination(svc, destination(be)); err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("remove backend %s from frontend %q: %w", be, n, err)
			}
		}
	}
	for n, f := range prev {
		if _, ok := desired[n]; ok {
			continue
		}
		if err := b.h.DelService(service(prevMarks[n], f)); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete IPVS service of frontend %q: %w", n, err)
		}
	}
	b.programmed, b.marks = desired, marks
	return nil
}

// removeAll deletes every IPVS service in the balancer's mark range.
func (b *Balancer) removeAll() error {
	svcs, err := b.h.GetServices()
	if err != nil {
		return fmt.Errorf("list IPVS services: %w", err)
	}
	for _, s := range svcs {
		if s.FWMark < FirstMark || s.FWMark >= FirstMark+MaxMarks {
			continue
		}
		if err := b.h.DelService(s); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete IPVS service with mark %#x: %w", s.FWMark, err)
		}
	}
	return nil
}

// Close removes every service and mark the balancer made.
func (b *Balancer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	return errors.Join(b.removeAll(), b.marker.Close())
}

func service(mark uint32, f lb.Frontend) *ipvs.Service {
	family := uint16(syscall.AF_INET)
	if (f.VIP.IsValid() && f.VIP.Is6()) || (len(f.Backends) > 0 && f.Backends[0].Addr.Is6()) {
		family = syscall.AF_INET6
	}
	return &ipvs.Service{FWMark: mark, AddressFamily: family, SchedName: scheduler}
}

// destination is a real server of a fwmark service. Port 0 (an any-port
// VIP's backend) keeps each connection's destination port: IPVS uses the
// virtual port when a real server has none, and a fwmark service covers
// every port its mark is set on.
func destination(be lb.Backend) *ipvs.Destination {
	family := uint16(syscall.AF_INET)
	if be.Addr.Is6() {
		family = syscall.AF_INET6
	}
	return &ipvs.Destination{
		Address: netipToIP(be.Addr), Port: be.Port, Weight: 1,
		ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: family,
	}
}

func netipToIP(a netip.Addr) []byte { return a.AsSlice() }
