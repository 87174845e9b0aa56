package ipvs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

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
	UpdateDestination(*ipvs.Service, *ipvs.Destination) error
	DelDestination(*ipvs.Service, *ipvs.Destination) error
	GetDestinations(*ipvs.Service) ([]*ipvs.Destination, error)
}

var _ Handle = (*ipvs.Handle)(nil)

// Mark asks for the packets of one frontend (matched on its published port
// or VIP) to carry a firewall mark, and to be masqueraded when the frontend
// says so. Of Frontend.Backends only the addresses matter: a connection
// sent back to the backend that opened it is masqueraded (hairpin).
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

// GenlFamily is the generic netlink family of IPVS.
const GenlFamily = "IPVS"

// Available reports whether the kernel has IPVS. It asks for the generic
// netlink family, because without it moby/ipvs reports success and does
// nothing. Asking by name loads the ip_vs module if the kernel has it.
func Available() bool { return familyExists(GenlFamily) }

func familyExists(name string) bool {
	_, err := netlink.GenlFamilyGet(name)
	return err == nil
}

// A backend that leaves a frontend is quiesced, not deleted, when its
// frontend is TCP: its weight drops to 0, so it gets no new connection,
// while its open ones go on until the task closes them. That is what the
// drain design needs (docs/networking.md: the task keeps running for
// --drain-delay and its stop grace period after it left the balancers),
// and what the nft backend does by leaving conntrack entries alone. A
// quiesced backend is deleted once it has no active connection, or after
// maxQuiesce; deleting it lets net.ipv4.vs.expire_nodest_conn end whatever
// is left at its next packet. A UDP backend is deleted at once: UDP has no
// close, so a client sending from one port would keep its entry, and the
// removed task its datagrams, alive for as long as it sends.
const (
	// reapInterval is how often quiesced backends' active connections
	// are checked: one GetDestinations per frontend that has any.
	reapInterval = time.Second
	// maxQuiesce bounds how long a quiesced backend keeps connections
	// nobody closes (a task stopped without closing them, or on a node
	// that went away): longer than stop grace periods are in practice
	// (Docker's default is 10 s, Kubernetes' 30 s).
	maxQuiesce = 2 * time.Minute
)

// Option configures a Balancer.
type Option func(*Balancer)

// WithLogger sets the logger (slog.Default otherwise).
func WithLogger(l *slog.Logger) Option { return func(b *Balancer) { b.log = l } }

// Balancer is the IPVS backend.
type Balancer struct {
	mu     sync.Mutex
	h      Handle
	marker Marker
	log    *slog.Logger
	// marks stay with a frontend name for as long as it is programmed, so a
	// change never renumbers other frontends.
	marks      map[string]uint32
	programmed map[string]frontend
	// quiesced holds, per frontend name, its backends at weight 0 and
	// since when.
	quiesced map[string]map[lb.Backend]time.Time
	dirty    bool
	closed   bool

	// forgetUDP deletes the flows of UDP backends that left a frontend
	// (conntrackFlows.forget); nil without conntrack.
	forgetUDP func(f lb.Frontend, gone []lb.Backend)

	now func() time.Time
	// reapEvery is the period of the background reaper; 0 turns it off
	// (tests call reap themselves).
	reapEvery time.Duration
	reapTimer *time.Timer
}

// frontend is a frontend as programmed, with the address family of its
// IPVS service (which cannot change; see serviceFamily).
type frontend struct {
	lb.Frontend
	family uint16
}

var _ lb.Balancer = (*Balancer)(nil)

// New returns a Balancer programming IPVS through h and marks through m.
func New(h Handle, m Marker, opts ...Option) *Balancer {
	b := &Balancer{
		h: h, marker: m, log: slog.Default(),
		marks: map[string]uint32{}, programmed: map[string]frontend{}, quiesced: map[string]map[lb.Backend]time.Time{},
		dirty: true, now: time.Now, reapEvery: reapInterval,
	}
	for _, o := range opts {
		o(b)
	}
	return b
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
	err := b.apply(ctx, s)
	b.dirty = err != nil
	b.scheduleReap()
	return err
}

func (b *Balancer) apply(ctx context.Context, s lb.State) error {
	desired := make(map[string]lb.Frontend, len(s.Frontends))
	for _, f := range s.Frontends {
		desired[f.Name] = f
	}
	if b.dirty {
		if err := b.resync(); err != nil {
			return err
		}
	}
	prev, prevMarks := b.programmed, b.marks
	// Keep the marks of frontends that stay, then give new ones the lowest
	// free marks. The marks of frontends that go are not reused in this
	// call: their services are deleted only at its end.
	marks := map[string]uint32{}
	used := map[uint32]bool{}
	for n, m := range prevMarks {
		used[m] = true
		if _, ok := desired[n]; ok {
			marks[n] = m
		}
	}
	names := slices.Sorted(maps.Keys(desired))
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
	programmed := make(map[string]frontend, len(desired))
	for _, n := range names {
		f := desired[n]
		old, had := prev[n]
		fam := serviceFamily(f, old, had)
		if had && old.family != fam {
			// A fwmark service is keyed by family and mark: a frontend
			// whose backends change family needs a new one.
			if err := b.h.DelService(service(marks[n], old.family)); err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("delete IPVS service of frontend %q to change its family: %w", n, err)
			}
			delete(b.quiesced, n)
			had = false
		}
		svc := service(marks[n], fam)
		if !had {
			if err := b.h.NewService(svc); err != nil && !errors.Is(err, syscall.EEXIST) {
				return fmt.Errorf("create IPVS service for frontend %q (mark %#x): %w", n, marks[n], err)
			}
		}
		for _, be := range f.Backends {
			if _, ok := b.quiesced[n][be]; ok {
				// A task's address came back (or a drain was undone).
				if err := b.h.UpdateDestination(svc, destination(be, weightServing)); err != nil {
					return fmt.Errorf("restore quiesced backend %s of frontend %q: %w", be, n, err)
				}
				delete(b.quiesced[n], be)
				continue
			}
			if had && slices.Contains(old.Backends, be) {
				continue
			}
			err := b.h.NewDestination(svc, destination(be, weightServing))
			if errors.Is(err, syscall.EEXIST) {
				// Left by an earlier run, perhaps quiesced.
				err = b.h.UpdateDestination(svc, destination(be, weightServing))
			}
			if err != nil {
				return fmt.Errorf("add backend %s to frontend %q: %w", be, n, err)
			}
		}
		programmed[n] = frontend{Frontend: f, family: fam}
	}
	var ms []Mark
	for _, n := range names {
		ms = append(ms, Mark{Frontend: desired[n], Mark: marks[n]})
	}
	if err := b.marker.SetMarks(ctx, ms); err != nil {
		return fmt.Errorf("set firewall marks: %w", err)
	}
	// Then what goes: real servers no longer wanted (quiesced or deleted,
	// see reapInterval), services of removed frontends.
	now := b.now()
	// UDP backends gone, by old frontend: their flows are forgotten once the
	// real servers are deleted, so that no datagram is scheduled to them.
	goneUDP := map[string][]lb.Backend{}
	defer func() {
		if b.forgetUDP == nil {
			return
		}
		for _, n := range slices.Sorted(maps.Keys(goneUDP)) {
			b.forgetUDP(prev[n].Frontend, goneUDP[n])
		}
	}()
	for _, n := range names {
		old, had := prev[n]
		if !had || old.family != programmed[n].family {
			continue
		}
		svc := service(marks[n], old.family)
		rekeyed := lb.Key(old.Frontend) != lb.Key(desired[n])
		for _, be := range old.Backends {
			if slices.Contains(desired[n].Backends, be) {
				if rekeyed && old.Protocol == lb.UDP {
					// The real server stays (a fwmark service has no
					// port), but flows to the old port are not the
					// frontend's any more.
					goneUDP[n] = append(goneUDP[n], be)
				}
				continue
			}
			if old.Protocol == lb.UDP {
				if err := b.h.DelDestination(svc, destination(be, 0)); err != nil && !errors.Is(err, syscall.ENOENT) {
					return fmt.Errorf("remove backend %s from frontend %q: %w", be, n, err)
				}
				goneUDP[n] = append(goneUDP[n], be)
				continue
			}
			if err := b.h.UpdateDestination(svc, destination(be, 0)); err != nil {
				return fmt.Errorf("quiesce backend %s of frontend %q: %w", be, n, err)
			}
			if b.quiesced[n] == nil {
				b.quiesced[n] = map[lb.Backend]time.Time{}
			}
			b.quiesced[n][be] = now
		}
	}
	for n, f := range prev {
		if _, ok := desired[n]; ok {
			continue
		}
		if err := b.h.DelService(service(prevMarks[n], f.family)); err != nil && !errors.Is(err, syscall.ENOENT) {
			return fmt.Errorf("delete IPVS service of frontend %q: %w", n, err)
		}
		delete(b.quiesced, n)
		if f.Protocol == lb.UDP && len(f.Backends) > 0 {
			goneUDP[n] = f.Backends
		}
	}
	b.programmed, b.marks = programmed, marks
	return nil
}

// scheduleReap starts the reaper's timer if there are quiesced backends and
// none is pending. Callers hold b.mu.
func (b *Balancer) scheduleReap() {
	if b.reapEvery == 0 || b.reapTimer != nil || b.closed || len(b.quiesced) == 0 {
		return
	}
	b.reapTimer = time.AfterFunc(b.reapEvery, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.reapTimer = nil
		if b.closed {
			return
		}
		b.reap(b.now())
		b.scheduleReap()
	})
}

// reap deletes the quiesced backends without an active connection, and
// those quiesced for maxQuiesce. A failure is logged and retried at the
// next round: what is programmed for new connections does not depend on it.
// Callers hold b.mu.
func (b *Balancer) reap(now time.Time) {
	for _, n := range slices.Sorted(maps.Keys(b.quiesced)) {
		qs := b.quiesced[n]
		f, ok := b.programmed[n]
		if !ok {
			delete(b.quiesced, n)
			continue
		}
		svc := service(b.marks[n], f.family)
		ds, err := b.h.GetDestinations(svc)
		if err != nil {
			b.log.Warn("list IPVS real servers to delete quiesced backends", "frontend", n, "err", err)
			continue
		}
		active := map[lb.Backend]int{}
		for _, d := range ds {
			a, _ := netip.AddrFromSlice(d.Address)
			active[lb.Backend{Addr: a.Unmap(), Port: d.Port}] = d.ActiveConnections
		}
		for be, since := range qs {
			conns, present := active[be]
			if present && conns > 0 && now.Sub(since) < maxQuiesce {
				continue
			}
			if present {
				if err := b.h.DelDestination(svc, destination(be, 0)); err != nil && !errors.Is(err, syscall.ENOENT) {
					b.log.Warn("delete quiesced backend", "frontend", n, "backend", be.String(), "err", err)
					continue
				}
				b.log.Debug("deleted quiesced backend", "frontend", n, "backend", be.String(), "active", conns)
			}
			delete(qs, be)
		}
		if len(qs) == 0 {
			delete(b.quiesced, n)
		}
	}
}

// MarkReader is what a Marker may also do: list the marks it finds
// programmed (from an earlier run too), with their frontends' names, keys
// and masquerade flags. A restarted balancer takes the marks back from it,
// so that the IPVS services of the earlier run, and their connections, are
// kept.
type MarkReader interface {
	ProgrammedMarks() ([]Mark, error)
}

// resync makes b.programmed, b.marks and b.quiesced what the kernel holds:
// the frontends the balancer knows (the last successful Apply's or, after a
// start, the marker's), each with the IPVS service of its mark and the real
// servers of that service, at weight 0 quiesced. Services in the range that
// no known frontend owns are deleted. Recreating every service instead
// would end every connection through them: at each start of shoald and
// after any error.
func (b *Balancer) resync() error {
	known := map[string]lb.Frontend{}
	marks := map[string]uint32{}
	if len(b.marks) > 0 {
		for n, f := range b.programmed {
			known[n], marks[n] = f.Frontend, b.marks[n]
		}
	} else if mr, ok := b.marker.(MarkReader); ok {
		ms, err := mr.ProgrammedMarks()
		if err != nil {
			// Then the services are rebuilt: worse for connections, not
			// for what is programmed.
			b.log.Warn("read the marks programmed before; recreating every IPVS service", "err", err)
		}
		owned := map[uint32]bool{}
		for _, mk := range ms {
			if mk.Mark < FirstMark || mk.Mark >= FirstMark+MaxMarks || owned[mk.Mark] {
				continue
			}
			if _, dup := known[mk.Frontend.Name]; dup {
				continue
			}
			owned[mk.Mark] = true
			known[mk.Frontend.Name], marks[mk.Frontend.Name] = mk.Frontend, mk.Mark
		}
	}
	owner := make(map[uint32]string, len(marks))
	for n, m := range marks {
		owner[m] = n
	}
	svcs, err := b.h.GetServices()
	if err != nil {
		return fmt.Errorf("list IPVS services: %w", err)
	}
	programmed := map[string]frontend{}
	quiesced := map[string]map[lb.Backend]time.Time{}
	now := b.now()
	for _, s := range svcs {
		if s.FWMark < FirstMark || s.FWMark >= FirstMark+MaxMarks {
			continue
		}
		n, ok := owner[s.FWMark]
		if _, seen := programmed[n]; !ok || seen {
			if err := b.h.DelService(s); err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("delete IPVS service with mark %#x: %w", s.FWMark, err)
			}
			continue
		}
		ds, err := b.h.GetDestinations(s)
		if err != nil {
			return fmt.Errorf("list real servers of IPVS service with mark %#x: %w", s.FWMark, err)
		}
		f := known[n]
		f.Backends = nil
		for _, d := range ds {
			a, _ := netip.AddrFromSlice(d.Address)
			be := lb.Backend{Addr: a.Unmap(), Port: d.Port}
			if d.Weight > 0 {
				f.Backends = append(f.Backends, be)
				continue
			}
			if quiesced[n] == nil {
				quiesced[n] = map[lb.Backend]time.Time{}
			}
			quiesced[n][be] = now
		}
		programmed[n] = frontend{Frontend: f, family: s.AddressFamily}
	}
	b.programmed, b.marks, b.quiesced = programmed, marks, quiesced
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
	if b.reapTimer != nil {
		b.reapTimer.Stop()
		b.reapTimer = nil
	}
	return errors.Join(b.removeAll(), b.marker.Close())
}

// Weights of real servers: every serving backend is equal; 0 quiesces.
const weightServing = 1

// serviceFamily is the address family of a frontend's IPVS service: its
// VIP's, else its backends', else (no backends) the one it has.
func serviceFamily(f lb.Frontend, old frontend, had bool) uint16 {
	switch {
	case f.VIP.IsValid():
		return family(f.VIP)
	case len(f.Backends) > 0:
		return family(f.Backends[0].Addr)
	case had:
		return old.family
	}
	return syscall.AF_INET
}

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

// service is the fwmark service of a mark. Its netmask only matters for
// persistence, which the balancer does not use, but the kernel refuses an
// IPv6 service without a prefix length; these are ipvsadm's defaults.
func service(mark uint32, family uint16) *ipvs.Service {
	netmask := uint32(0xffffffff)
	if family == syscall.AF_INET6 {
		netmask = 128
	}
	return &ipvs.Service{FWMark: mark, AddressFamily: family, SchedName: scheduler, Netmask: netmask}
}

// destination is a real server of a fwmark service. Port 0 (an any-port
// VIP's backend) keeps each connection's destination port: IPVS uses the
// virtual port when a real server has none, and a fwmark service covers
// every port its mark is set on.
func destination(be lb.Backend, weight int) *ipvs.Destination {
	return &ipvs.Destination{
		Address: be.Addr.AsSlice(), Port: be.Port, Weight: weight,
		ConnectionFlags: ipvs.ConnectionFlagMasq, AddressFamily: family(be.Addr),
	}
}
