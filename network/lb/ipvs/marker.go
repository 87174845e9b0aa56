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

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
)

// DefaultMarkTable is the table an NftMarker owns unless told otherwise.
const DefaultMarkTable = "shoal-ipvs-mark"

// The marker table's layout:
//
//	prerouting (filter, mangle)  meta mark set ip daddr . l4proto map @vip4any
//	output (route, mangle)       meta mark set ip6 daddr . l4proto map @vip6any
//	                             meta mark set ip daddr . l4proto . dport map @vip4
//	                             meta mark set ip6 daddr . l4proto . dport map @vip6
//	                             fib daddr local, not loopback: meta mark set l4proto . dport map @published
//	postrouting (nat, srcnat)    meta mark @masquerade masquerade
//	                             ip saddr . ip daddr @hairpin4 masquerade (and ip6 @hairpin6)
//	unmark (filter, srcnat + 1)  meta mark & 0xffffff00 { 0x100, 0x200, …, 0x1000 }: meta mark set 0
//
// Any-port VIPs (lb.Frontend.IsAnyPort) are marked first, so that a
// frontend on one port of the same VIP overwrites the mark and wins.
//
// A mark is used twice: IPVS schedules the packet by it (at input, or at
// output for the node's own connections), and the masquerade reads it in
// postrouting. Then unmark clears it from every packet that leaves, so that
// nothing built from the packet inherits it. Left on, it reached the VXLAN
// device, which keeps an inner packet's mark on the outer datagram it
// sends from this namespace; the datagram passed output again, and IPVS's
// fwmark service, which matches any protocol, took it for a new connection
// and NATed it to a task's port: every published port timed out once its
// backend ran on another node. Clearing the mark where its use ends covers
// VXLAN and any other encapsulation or re-routing alike; kube-proxy and the
// nft backend clear theirs the same way, after masquerading.
//
// The hairpin sets hold "b . b" for every backend address b: a connection
// IPVS sends back to the task that opened it is masqueraded even when its
// frontend keeps client addresses, or the task's reply would go to itself,
// from the wrong address (the nft backend does the same).
//
// A frontend owns one map element (and one element of @masquerade when it
// masquerades), so a change to it touches nothing else; a backend address
// owns its hairpin element while any frontend has it. The output chain is
// of type route so that the kernel routes local traffic again after the mark
// changes, as iptables' mangle OUTPUT does.
//
// `nft list` prints the maps' marks byte-swapped on little-endian hosts:
// google/nftables cannot record that a map's data is in host order. The
// kernel sets the right mark; only the listing is off.
const (
	markChainPrerouting  = "prerouting"
	markChainOutput      = "output"
	markChainPostrouting = "postrouting"
	markChainUnmark      = "unmark"
	// The dispatch maps are named in package dispatch.
	markSetMasquerade = "masquerade"
	markSetHairpin4   = "hairpin4"
	markSetHairpin6   = "hairpin6"
)

// markElementsPerMessage bounds the elements sent in one netlink message:
// the element list is one attribute with a 16-bit length, which a few
// hundred elements would overflow.
const markElementsPerMessage = 256

// MarkerOption configures an NftMarker.
type MarkerOption func(*NftMarker)

// WithMarkTable names the table the marker owns (tests use unique names).
func WithMarkTable(name string) MarkerOption {
	return func(m *NftMarker) { m.table.Name = name }
}

// WithMarkNetNS programs the marks inside the given network namespace
// instead of the caller's. The handle must stay open until Close.
func WithMarkNetNS(ns netns.NsHandle) MarkerOption { return func(m *NftMarker) { m.ns = ns } }

// WithMarkLogger sets the logger (slog.Default otherwise).
func WithMarkLogger(l *slog.Logger) MarkerOption { return func(m *NftMarker) { m.log = l } }

// NftMarker is the Marker that sets the marks with nftables: one inet table
// that marks each frontend's packets in prerouting (and output, for the
// node's own traffic) and masquerades the marks of frontends that ask for
// it. IPVS in NAT mode needs that masquerade so that backends reply through
// the node; it also needs net.ipv4.vs.conntrack=1 so the nat hook sees IPVS
// connections at all.
//
// SetMarks changes only what differs from its last success, in one
// transaction; after any error the next SetMarks rebuilds the table. It is
// safe for concurrent use.
type NftMarker struct {
	mu    sync.Mutex
	ns    netns.NsHandle
	log   *slog.Logger
	base  *slog.Logger // log without the table, for the balancer NewKernel makes
	conn  *nftables.Conn
	table *nftables.Table
	sets  markSets

	// programmed is what the kernel holds as of the last successful flush,
	// and hairpin the backend addresses in the hairpin sets.
	programmed map[string]markEntry
	hairpin    map[netip.Addr]bool
	dirty      bool
	closed     bool

	// beforeFlush lets tests add to a transaction before it is sent, to make
	// it fail.
	beforeFlush func(c *nftables.Conn, t *nftables.Table)
}

var _ Marker = (*NftMarker)(nil)

// NewNftMarker returns a marker. It touches the kernel only on the first
// SetMarks.
func NewNftMarker(opts ...MarkerOption) (*NftMarker, error) {
	m := &NftMarker{
		ns:         -1,
		log:        slog.Default(),
		table:      &nftables.Table{Name: DefaultMarkTable, Family: nftables.TableFamilyINet},
		programmed: map[string]markEntry{},
		dirty:      true,
	}
	for _, o := range opts {
		o(m)
	}
	if m.table.Name == "" {
		return nil, errors.New("nftables mark table: empty name")
	}
	connOpts := []nftables.ConnOption{nftables.AsLasting()}
	if m.ns.IsOpen() {
		connOpts = append(connOpts, nftables.WithNetNSFd(int(m.ns)))
	}
	conn, err := nftables.New(connOpts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables connection: %w", err)
	}
	m.conn = conn
	m.sets = newMarkSets(m.table)
	m.base, m.log = m.log, m.log.With("table", m.table.Name)
	return m, nil
}

// markEntry is one frontend's mark in kernel terms.
type markEntry struct {
	proto uint8
	port  uint16
	vip   netip.Addr
	mark  uint32
	masq  bool
}

func newMarkEntry(mk Mark) markEntry {
	proto, _ := mk.Frontend.Protocol.Number() // validated
	return markEntry{proto: proto, port: mk.Frontend.Port, vip: mk.Frontend.VIP, mark: mk.Mark, masq: mk.Frontend.Masquerade}
}

// validateMarks checks the frontends as lb.Validate does, and that every
// mark is set and used once: two frontends on one mark would share an IPVS
// service.
func validateMarks(ms []Mark) error {
	fs := make([]lb.Frontend, len(ms))
	var errs []error
	owner := make(map[uint32]string, len(ms))
	for i, mk := range ms {
		fs[i] = mk.Frontend
		fs[i].Backends = nil
		switch other, dup := owner[mk.Mark]; {
		case mk.Mark == 0:
			errs = append(errs, fmt.Errorf("frontend %q: mark 0 is no mark", mk.Frontend.Name))
		case mk.Mark < FirstMark || mk.Mark >= FirstMark+MaxMarks:
			// unmark clears only the range's marks.
			errs = append(errs, fmt.Errorf("frontend %q: mark %#x is outside the balancer's range [%#x, %#x)", mk.Frontend.Name, mk.Mark, FirstMark, FirstMark+MaxMarks))
		case dup:
			errs = append(errs, fmt.Errorf("frontend %q: mark %#x is already frontend %q's", mk.Frontend.Name, mk.Mark, other))
		default:
			owner[mk.Mark] = mk.Frontend.Name
		}
	}
	return errors.Join(append([]error{lb.Validate(lb.State{Frontends: fs})}, errs...)...)
}

// SetMarks programs ms, changing only what differs from the last success.
func (m *NftMarker) SetMarks(ctx context.Context, ms []Mark) error {
	if err := validateMarks(ms); err != nil {
		return fmt.Errorf("invalid marks: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("nftables marker is closed")
	}
	desired := make(map[string]markEntry, len(ms))
	hairpin := map[netip.Addr]bool{}
	for _, mk := range ms {
		desired[mk.Frontend.Name] = newMarkEntry(mk)
		for _, be := range mk.Frontend.Backends {
			hairpin[be.Addr] = true
		}
	}
	full := m.dirty
	if full {
		m.writeFull(desired)
		m.hairpinElements(nil, hairpin)
	} else {
		m.writeChanges(desired)
		m.hairpinElements(m.hairpin, hairpin)
	}
	if m.beforeFlush != nil {
		m.beforeFlush(m.conn, m.table)
	}
	if err := m.conn.Flush(); err != nil {
		m.dirty = true
		if full {
			return fmt.Errorf("rebuild nftables table %s: %w", m.table.Name, err)
		}
		return fmt.Errorf("update nftables table %s (the next call rebuilds it): %w", m.table.Name, err)
	}
	m.programmed, m.hairpin, m.dirty = desired, hairpin, false
	m.log.Debug("programmed IPVS marks", "frontends", len(desired), "full", full)
	return nil
}

var _ MarkReader = (*NftMarker)(nil)

// ProgrammedMarks reads the marks the table holds, from this marker or an
// earlier one: each map element names its frontend in its comment. No
// table means no marks.
func (m *NftMarker) ProgrammedMarks() ([]Mark, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	tables, err := m.conn.ListTablesOfFamily(m.table.Family)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == m.table.Name }) {
		return nil, nil
	}
	elements := func(name string) ([]nftables.SetElement, error) {
		s, err := m.conn.GetSetByName(m.table, name)
		if err != nil {
			return nil, fmt.Errorf("read set %s of table %s: %w", name, m.table.Name, err)
		}
		es, err := m.conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read elements of set %s of table %s: %w", name, m.table.Name, err)
		}
		return es, nil
	}
	masq := map[uint32]bool{}
	es, err := elements(markSetMasquerade)
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		masq[binaryutil.NativeEndian.Uint32(e.Key)] = true
	}
	var out []Mark
	for _, set := range m.sets.All() {
		es, err := elements(set.Name)
		if err != nil {
			return nil, err
		}
		for _, e := range es {
			proto, port, vip, err := dispatch.Decode(set.Name, e.Key)
			if err != nil || e.Comment == "" || len(e.Val) != 4 {
				m.log.Warn("skipping a mark element not of ours", "set", set.Name, "key", fmt.Sprintf("%x", e.Key), "err", err)
				continue
			}
			mark := binaryutil.NativeEndian.Uint32(e.Val)
			p := map[uint8]lb.Protocol{6: lb.TCP, 17: lb.UDP}[proto]
			out = append(out, Mark{Frontend: lb.Frontend{Name: e.Comment, Protocol: p, Port: port, VIP: vip, Masquerade: masq[mark]}, Mark: mark})
		}
	}
	return out, nil
}

// Close deletes the table and everything in it.
func (m *NftMarker) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	defer m.conn.CloseLasting()
	// Adding first makes the delete succeed whether or not the table exists.
	m.conn.AddTable(m.table)
	m.conn.DelTable(m.table)
	if err := m.conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", m.table.Name, err)
	}
	return nil
}

type markSets struct {
	dispatch.Maps
	masquerade         *nftables.Set
	hairpin4, hairpin6 *nftables.Set
}

func newMarkSets(t *nftables.Table) markSets {
	return markSets{
		Maps: dispatch.NewMaps(t, nftables.TypeMark),
		masquerade: &nftables.Set{
			Table: t, Name: markSetMasquerade, KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian,
		},
		hairpin4: &nftables.Set{Table: t, Name: markSetHairpin4, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr)},
		hairpin6: &nftables.Set{Table: t, Name: markSetHairpin6, Concatenation: true,
			KeyType: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr)},
	}
}

func (s markSets) all() []*nftables.Set {
	return append(s.Maps.All(), s.masquerade, s.hairpin4, s.hairpin6)
}

// hairpinElements queues the changes that turn the hairpin sets from old's
// addresses into desired's.
func (m *NftMarker) hairpinElements(old, desired map[netip.Addr]bool) {
	byset := func(addrs, skip map[netip.Addr]bool) map[*nftables.Set][]nftables.SetElement {
		out := map[*nftables.Set][]nftables.SetElement{}
		for _, a := range slices.SortedFunc(maps.Keys(addrs), netip.Addr.Compare) {
			if skip[a] {
				continue
			}
			s := m.sets.hairpin4
			if a.Is6() {
				s = m.sets.hairpin6
			}
			out[s] = append(out[s], nftables.SetElement{Key: append(a.AsSlice(), a.AsSlice()...)})
		}
		return out
	}
	dels, adds := byset(old, desired), byset(desired, old)
	for _, s := range []*nftables.Set{m.sets.hairpin4, m.sets.hairpin6} {
		for chunk := range slices.Chunk(dels[s], markElementsPerMessage) {
			// SetDeleteElements and SetAddElements fail only for anonymous sets.
			_ = m.conn.SetDeleteElements(s, chunk)
		}
		for chunk := range slices.Chunk(adds[s], markElementsPerMessage) {
			_ = m.conn.SetAddElements(s, chunk)
		}
	}
}

// writeFull queues a transaction that replaces the whole table.
func (m *NftMarker) writeFull(desired map[string]markEntry) {
	c, t := m.conn, m.table
	// add, delete, add: the delete must not fail when the table is missing,
	// and everything after it starts from an empty table.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	m.sets = newMarkSets(t)
	for _, s := range m.sets.all() {
		// AddSet fails only on anonymous or constant sets.
		_ = c.AddSet(s, nil)
	}
	pre := c.AddChain(&nftables.Chain{Name: markChainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	out := c.AddChain(&nftables.Chain{Name: markChainOutput, Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	for _, ch := range []*nftables.Chain{pre, out} {
		for _, r := range markRules(m.sets) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	post := c.AddChain(&nftables.Chain{Name: markChainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masqueradeMarks(m.sets.masquerade)})
	for _, r := range hairpinRules(m.sets) {
		c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: r})
	}
	unmark := c.AddChain(&nftables.Chain{Name: markChainUnmark, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: unmarkPriority})
	ours := ourMarks(t)
	// AddSet fails only for anonymous sets that are not constant.
	_ = c.AddSet(ours, ourMarkElements())
	c.AddRule(&nftables.Rule{Table: t, Chain: unmark, Exprs: unmarkRule(ours)})

	names := make([]string, 0, len(desired))
	for n := range desired {
		names = append(names, n)
	}
	slices.Sort(names)
	m.addElements(names, desired)
}

// writeChanges queues a transaction that turns programmed into desired,
// touching only frontends that changed.
func (m *NftMarker) writeChanges(desired map[string]markEntry) {
	old := m.programmed
	var gone, added []string
	for n, oe := range old {
		if ne, ok := desired[n]; !ok || ne != oe {
			gone = append(gone, n)
		}
	}
	for n, ne := range desired {
		if oe, ok := old[n]; !ok || oe != ne {
			added = append(added, n)
		}
	}
	slices.Sort(gone)
	slices.Sort(added)
	// Deletes go first: two frontends may swap keys or marks in one call.
	byset := map[*nftables.Set][]nftables.SetElement{}
	for _, n := range gone {
		s, key := m.element(old[n])
		byset[s] = append(byset[s], nftables.SetElement{Key: key})
		if old[n].masq {
			byset[m.sets.masquerade] = append(byset[m.sets.masquerade], nftables.SetElement{Key: markKey(old[n].mark)})
		}
	}
	for _, s := range m.sets.all() {
		for chunk := range slices.Chunk(byset[s], markElementsPerMessage) {
			// SetDeleteElements fails only for anonymous sets.
			_ = m.conn.SetDeleteElements(s, chunk)
		}
	}
	m.addElements(added, desired)
}

func (m *NftMarker) addElements(names []string, desired map[string]markEntry) {
	byset := map[*nftables.Set][]nftables.SetElement{}
	for _, n := range names {
		e := desired[n]
		s, key := m.element(e)
		byset[s] = append(byset[s], nftables.SetElement{Key: key, Val: markKey(e.mark), Comment: n})
		if e.masq {
			byset[m.sets.masquerade] = append(byset[m.sets.masquerade], nftables.SetElement{Key: markKey(e.mark), Comment: n})
		}
	}
	for _, s := range m.sets.all() {
		for chunk := range slices.Chunk(byset[s], markElementsPerMessage) {
			// SetAddElements fails only for anonymous sets.
			_ = m.conn.SetAddElements(s, chunk)
		}
	}
}

// markKey is a mark as the kernel's meta mark register holds it.
func markKey(mark uint32) []byte { return binaryutil.NativeEndian.PutUint32(mark) }

// element returns the map a frontend's element lives in and its key. Each
// part of a concatenated key is padded to 4 bytes, as the kernel's registers
// are.
func (m *NftMarker) element(e markEntry) (*nftables.Set, []byte) {
	return m.sets.Element(e.proto, e.port, e.vip)
}

// markRules set the mark from the maps by destination. A later match
// overrides an earlier one, so any-port VIPs come first and a frontend on
// one port of a VIP wins.
func markRules(s markSets) [][]expr.Any {
	return s.Rules(func(set *nftables.Set, keyReg uint32) []expr.Any {
		return []expr.Any{
			&expr.Lookup{SourceRegister: keyReg, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}
	}, true)
}

// masqueradeMarks masquerades connections whose mark is in the set. It runs
// for a connection's first packet only (a nat chain), so the mark is cleared
// by unmark, which sees every packet.
func masqueradeMarks(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		// Port-preserving, not fully-random: see masqueradeMarked in
		// network/lb/nft (random ports meet the tasks' TIME_WAIT PAWS
		// checks under connection churn).
		&expr.Masq{},
	}
}

// unmarkPriority runs unmark right after the masquerade (srcnat), the
// mark's last reader. IPVS has no hook in postrouting.
var unmarkPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 1)

// markBlock is the granularity unmark matches marks with: the balancer's
// range is whole blocks of it, so a mark is in the range exactly when its
// block (mark &^ (markBlock-1)) is one of the range's. A range compare
// would need the mark in network byte order first, and google/nftables
// cannot read a byteorder expression back.
const markBlock = 0x100

// ourMarks is the anonymous set of the blocks of the balancer's range.
func ourMarks(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: nftables.TypeMark, KeyByteOrder: binaryutil.NativeEndian}
}

func ourMarkElements() []nftables.SetElement {
	var out []nftables.SetElement
	for b := FirstMark; b < FirstMark+MaxMarks; b += markBlock {
		out = append(out, nftables.SetElement{Key: markKey(b)})
	}
	return out
}

// unmarkRule clears a mark of the balancer's range; marks outside it are
// someone else's and stay.
func unmarkRule(ours *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: markKey(^uint32(markBlock - 1)), Xor: markKey(0)},
		&expr.Lookup{SourceRegister: 1, SetName: ours.Name, SetID: ours.ID},
		&expr.Immediate{Register: 1, Data: markKey(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// hairpinRules masquerade connections whose destination, after IPVS's
// NAT, is their own source.
func hairpinRules(s markSets) [][]expr.Any {
	const (
		reg32_00 = 8 // NFT_REG32_00
		reg1     = 1 // NFT_REG_1: 16 bytes, NFT_REG32_00..03
		reg2     = 2 // NFT_REG_2: 16 bytes, NFT_REG32_04..07
	)
	rule := func(proto byte, addrOff, addrLen, src, dst uint32, set *nftables.Set) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: src, Base: expr.PayloadBaseNetworkHeader, Offset: addrOff, Len: addrLen},
			&expr.Payload{DestRegister: dst, Base: expr.PayloadBaseNetworkHeader, Offset: addrOff + addrLen, Len: addrLen},
			&expr.Lookup{SourceRegister: src, SetName: set.Name, SetID: set.ID},
			&expr.Masq{},
		}
	}
	return [][]expr.Any{
		rule(unix.NFPROTO_IPV4, 12, 4, reg32_00, reg32_00+1, s.hairpin4),
		rule(unix.NFPROTO_IPV6, 8, 16, reg1, reg2, s.hairpin6),
	}
}
