package nft

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/lb"
)

// DefaultTable is the table a Balancer owns unless told otherwise.
const DefaultTable = "shoal-lb"

// DefaultMasqueradeMark is the packet mark bit that asks postrouting to
// masquerade. kube-proxy uses 0x4000 and 0x8000 and Docker leaves the low
// bits alone for its own marks, so a bit of our own lets them share a node.
const DefaultMasqueradeMark uint32 = 0x2000

// netlinkBuffer is the socket send and receive buffer for nftables batches.
// A full build of 1,000 frontends × 10 backends is one batch of several
// megabytes (a single sendmsg) and tens of thousands of acks; with the
// default buffers (~200 KiB) the kernel refuses it (EMSGSIZE) or drops acks
// (ENOBUFS).
const netlinkBuffer = 64 << 20

// Option configures a Balancer.
type Option func(*Balancer)

// WithTable names the table the Balancer owns (tests use unique names).
func WithTable(name string) Option { return func(b *Balancer) { b.table.Name = name } }

// WithNetNS programs the balancer inside the given network namespace instead
// of the caller's. The handle must stay open until Close.
func WithNetNS(ns netns.NsHandle) Option { return func(b *Balancer) { b.ns = ns } }

// WithMasqueradeMark sets the mark bit used to ask for masquerade.
func WithMasqueradeMark(mark uint32) Option { return func(b *Balancer) { b.mark = mark } }

// WithLogger sets the logger (slog.Default otherwise).
func WithLogger(l *slog.Logger) Option { return func(b *Balancer) { b.log = l } }

// withConn makes the Balancer write through c and ct instead of opening
// netlink sockets: unit tests give it nfttest's fake.
func withConn(c conn, ct conntrack) Option {
	return func(b *Balancer) { b.conn, b.ct = c, ct }
}

// conn is what a Balancer needs of an nftables connection: it queues a
// transaction's operations, and Flush sends them as one batch that the
// kernel applies whole or not at all. *nftables.Conn is the real one;
// unit tests use network/lb/internal/nfttest's fake, which keeps the
// ruleset the operations make.
type conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	AddChain(c *nftables.Chain) *nftables.Chain
	FlushChain(c *nftables.Chain)
	DelChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	Flush() error
	CloseLasting() error
}

// conntrack is what a Balancer needs of a netfilter netlink handle: to
// forget the flows of UDP backends that left.
type conntrack interface {
	ConntrackDeleteFilters(table netlink.ConntrackTableType, family netlink.InetFamily, filters ...netlink.CustomConntrackFilter) (uint, error)
	Close()
}

var (
	_ conn      = (*nftables.Conn)(nil)
	_ conntrack = (*netlink.Handle)(nil)
)

// Balancer is the nftables load balancer backend. It is safe for concurrent
// use; Applies are serialised.
type Balancer struct {
	mu    sync.Mutex
	ns    netns.NsHandle
	mark  uint32
	log   *slog.Logger
	conn  conn
	ct    conntrack
	table *nftables.Table
	sets  sets

	// programmed is what the kernel holds, as of the last successful Flush.
	programmed map[string]*frontend
	// hairpin counts, per backend address in the hairpin sets, the
	// frontends' backends that have it, likewise.
	hairpin map[netip.Addr]int
	// dirty means the kernel may not match programmed (first Apply, or any
	// error since): the next Apply rebuilds the table from scratch.
	dirty  bool
	closed bool

	// beforeFlush lets tests add to a transaction before it is sent, to make
	// it fail.
	beforeFlush func(c conn, t *nftables.Table)
}

var _ lb.Balancer = (*Balancer)(nil)

// New returns a Balancer. It touches the kernel only on the first Apply.
func New(opts ...Option) (*Balancer, error) {
	b := &Balancer{
		ns:         -1,
		mark:       DefaultMasqueradeMark,
		log:        slog.Default(),
		table:      &nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyINet},
		programmed: map[string]*frontend{},
		hairpin:    map[netip.Addr]int{},
		dirty:      true,
	}
	for _, o := range opts {
		o(b)
	}
	if b.mark == 0 || b.mark&(b.mark-1) != 0 {
		return nil, fmt.Errorf("masquerade mark %#x: want a single bit", b.mark)
	}
	b.log = b.log.With("table", b.table.Name)
	if b.conn != nil {
		return b, nil
	}
	connOpts := []nftables.ConnOption{
		nftables.AsLasting(),
		nftables.WithSockOptions(growBuffers),
	}
	if b.ns.IsOpen() {
		connOpts = append(connOpts, nftables.WithNetNSFd(int(b.ns)))
	}
	nc, err := nftables.New(connOpts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	var ct *netlink.Handle
	if b.ns.IsOpen() {
		ct, err = netlink.NewHandleAt(b.ns, unix.NETLINK_NETFILTER)
	} else {
		ct, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		nc.CloseLasting()
		return nil, fmt.Errorf("open conntrack netlink handle: %w", err)
	}
	b.conn, b.ct = nc, ct
	return b, nil
}

// growBuffers raises the netlink socket's buffers past the sysctl limits
// (rmem_max, wmem_max) with the FORCE options, which need CAP_NET_ADMIN, as
// programming nftables does anyway.
func growBuffers(c *mdnetlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = errors.Join(
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, netlinkBuffer),
			unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, netlinkBuffer),
		)
	}); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("grow netlink socket buffers to %d bytes: %w", netlinkBuffer, serr)
	}
	return nil
}

// Apply programs s, changing only what differs from the last Apply.
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
		return errors.New("nftables balancer is closed")
	}
	desired := make(map[string]*frontend, len(s.Frontends))
	for _, f := range s.Frontends {
		nf := newFrontend(f)
		if of, ok := b.programmed[f.Name]; ok {
			nf.chain = of.chain // hashing names is most of a no-op Apply's cost
		} else {
			nf.chain = frontendChain(f.Name)
		}
		desired[f.Name] = nf
	}
	full := b.dirty
	var hairpin map[netip.Addr]int // the change to b.hairpin
	if full {
		hairpin = hairpinChange(nil, desired)
		b.writeFull(desired, hairpin)
	} else {
		hairpin = hairpinChange(b.programmed, desired)
		b.writeChanges(desired, hairpin)
	}
	if b.beforeFlush != nil {
		b.beforeFlush(b.conn, b.table)
	}
	if err := b.conn.Flush(); err != nil {
		b.dirty = true
		if full {
			return fmt.Errorf("rebuild nftables table %s: %w", b.table.Name, err)
		}
		return fmt.Errorf("update nftables table %s (the next apply rebuilds it): %w", b.table.Name, err)
	}
	old := b.programmed
	if full {
		b.hairpin = map[netip.Addr]int{}
	}
	applyCounts(b.hairpin, hairpin)
	b.programmed, b.dirty = desired, false
	b.forgetUDPFlows(old, desired)
	return nil
}

// Close deletes the table and everything in it.
func (b *Balancer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	defer b.ct.Close()
	defer b.conn.CloseLasting()
	// Adding first makes the delete succeed whether or not the table exists.
	b.conn.AddTable(b.table)
	b.conn.DelTable(b.table)
	if err := b.conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", b.table.Name, err)
	}
	return nil
}

// forgetUDPFlows deletes conntrack entries of UDP backends that left a
// frontend: UDP has no close, so the kernel would keep sending a client's
// datagrams to a backend that is gone until the entry times out. TCP entries
// stay: a reset from the dead backend ends them soon enough.
func (b *Balancer) forgetUDPFlows(old, desired map[string]*frontend) {
	var filters []netlink.CustomConntrackFilter
	for name, of := range old {
		if of.proto != unix.IPPROTO_UDP {
			continue
		}
		nf := desired[name]
		for _, be := range of.backends {
			if nf != nil && nf.key() == of.key() && slices.Contains(nf.backends, be) {
				continue
			}
			f := &netlink.ConntrackFilter{}
			errs := []error{
				f.AddProtocol(unix.IPPROTO_UDP),
				f.AddIP(netlink.ConntrackReplySrcIP, be.Addr.AsSlice()),
			}
			if of.port != 0 { // an any-port VIP's flows are on every port
				errs = append(errs, f.AddPort(netlink.ConntrackOrigDstPort, of.port))
			}
			if err := errors.Join(errs...); err != nil {
				b.log.Warn("build conntrack filter", "frontend", name, "backend", be.String(), "err", err)
				continue
			}
			if of.vip.IsValid() {
				if err := f.AddIP(netlink.ConntrackOrigDstIP, of.vip.AsSlice()); err != nil {
					b.log.Warn("build conntrack filter", "frontend", name, "backend", be.String(), "err", err)
					continue
				}
			}
			filters = append(filters, f)
		}
	}
	if len(filters) == 0 {
		return
	}
	for _, family := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		n, err := b.ct.ConntrackDeleteFilters(netlink.ConntrackTable, family, filters...)
		if err != nil {
			b.log.Warn("delete conntrack entries of removed UDP backends", "family", family, "err", err)
			continue
		}
		if n > 0 {
			b.log.Debug("deleted conntrack entries of removed UDP backends", "family", family, "entries", n)
		}
	}
}

// frontend is one frontend as programmed: its lb.Frontend in kernel terms
// plus the names of the chains that carry it.
type frontend struct {
	name     string
	proto    uint8
	port     uint16
	vip      netip.Addr
	backends []lb.Backend
	masq     bool
	chain    string
}

func newFrontend(f lb.Frontend) *frontend {
	proto, _ := f.Protocol.Number() // validated
	return &frontend{
		name:     f.Name,
		proto:    proto,
		port:     f.Port,
		vip:      f.VIP,
		backends: slices.Clone(f.Backends),
		masq:     f.Masquerade,
	}
}

type elementKey struct {
	proto uint8
	port  uint16
	vip   netip.Addr
}

// key identifies the map element that leads to the frontend's chain.
func (f *frontend) key() elementKey { return elementKey{f.proto, f.port, f.vip} }
