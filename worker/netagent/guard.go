package netagent

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/overlay"
)

// GuardTable is the nftables table that keeps the LAN out of the node's
// overlays and resolver:
//
//	table ip shoal-guard {
//		set vxlan-peers { type ipv4_addr; elements = { <peers' data addresses> } }
//		chain input {
//			type filter hook input priority raw; policy accept;
//			udp dport 4789 ip saddr != @vxlan-peers counter drop
//			ip daddr <gateway> udp dport <dns port> iifname != "shb-<vni>" counter drop
//			ip daddr <gateway> tcp dport <dns port> iifname != "shb-<vni>" counter drop
//			...
//		}
//	}
//	table ip6 shoal-guard {
//		chain input {
//			type filter hook input priority raw; policy accept;
//			udp dport 4789 iifname != "shw-wg" counter drop
//		}
//	}
//
// The VXLAN device takes any datagram on port 4789 and bridges its inner
// frame to the tasks, whoever sent it; the rule keeps that to the nodes
// the managers list as peers. The resolver's sockets are bound to the
// gateway addresses, which a host of the underlay can route to through the
// node; the DNS rules keep it to queries that come in on the network's
// bridge, from its tasks, so a spoofed task source address from outside
// does not pass either (the resolver itself refuses sources outside the
// subnet). VXLAN over IPv6 is only ever that of encrypted networks, from
// the WireGuard tunnel, which authenticated its sender: the ip6 table drops
// it from anywhere else (the kernel would take a datagram for the node's
// tunnel address on any interface). The tables exist while the node has
// an overlay; each change is one transaction that replaces them whole, so
// no packet sees a half-updated peer set.
const GuardTable = "shoal-guard"

const (
	guardSet   = "vxlan-peers"
	guardChain = "input"
)

// guardState is what the guard table holds: nothing at all (no table) when
// the node has no overlay.
type guardState struct {
	// peers are the other nodes' data addresses (VTEPs), sorted.
	peers []netip.Addr
	// gateways are the networks' resolver addresses with their bridges,
	// sorted by address.
	gateways []gatewayGuard
	// active: the node has an overlay, so the table exists.
	active bool
}

// gatewayGuard is a resolver address and the bridge its queries come in on.
type gatewayGuard struct {
	addr   netip.Addr
	bridge string
}

// guard keeps the guard table of one network namespace.
type guard struct {
	ns      netns.NsHandle // -1: the caller's namespace
	dnsPort uint16
}

func newGuard(netNSPath string, dnsPort int) (*guard, error) {
	g := &guard{ns: netns.None(), dnsPort: uint16(dnsPort)}
	if netNSPath == "" {
		return g, nil
	}
	ns, err := netns.GetFromPath(netNSPath)
	if err != nil {
		return nil, fmt.Errorf("guard: open network namespace %s: %w", netNSPath, err)
	}
	g.ns = ns
	return g, nil
}

// Close releases the namespace; the table stays (see remove).
func (g *guard) Close() error {
	if g.ns.IsOpen() {
		return g.ns.Close()
	}
	return nil
}

func (g *guard) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if g.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(g.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("guard: nftables: %w", err)
	}
	return c, nil
}

var (
	guardTable  = &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyIPv4}
	guardTable6 = &nftables.Table{Name: GuardTable, Family: nftables.TableFamilyIPv6}
)

// sync makes the table hold s, in one transaction: the old table (if any)
// is deleted and the new one created in the same batch, which the kernel
// applies whole or not at all.
func (g *guard) sync(s guardState) error {
	c, err := g.conn()
	if err != nil {
		return err
	}
	// Adding first makes the delete succeed whether or not the table exists.
	for _, t := range []*nftables.Table{guardTable, guardTable6} {
		c.AddTable(t)
		c.DelTable(t)
	}
	if s.active {
		if err := g.build(c, s); err != nil {
			return err
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("guard: replace nftables table %s (%d peers, %d gateways): %w", GuardTable, len(s.peers), len(s.gateways), err)
	}
	return nil
}

// remove deletes the table.
func (g *guard) remove() error {
	if err := g.sync(guardState{}); err != nil {
		return fmt.Errorf("remove the overlay guard: %w", err)
	}
	return nil
}

func (g *guard) build(c *nftables.Conn, s guardState) error {
	t := c.AddTable(guardTable)
	set := &nftables.Set{Table: t, Name: guardSet, KeyType: nftables.TypeIPAddr}
	elems := make([]nftables.SetElement, 0, len(s.peers))
	for _, p := range s.peers {
		if !p.Is4() {
			return fmt.Errorf("guard: peer data address %s: VXLAN runs over IPv4 here", p)
		}
		elems = append(elems, nftables.SetElement{Key: p.AsSlice()})
	}
	if err := c.AddSet(set, elems); err != nil {
		return fmt.Errorf("guard: peer set: %w", err)
	}
	policy := nftables.ChainPolicyAccept
	// Raw priority: the drop comes before any other table's input chain
	// spends work on a packet that is not ours to take.
	ch := c.AddChain(&nftables.Chain{
		Name:     guardChain,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRaw,
		Policy:   &policy,
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: vxlanRule(set)})
	for _, gw := range s.gateways {
		if !gw.addr.Is4() {
			return fmt.Errorf("guard: gateway %s: the overlays are IPv4", gw.addr)
		}
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: dnsRule(gw, proto, g.dnsPort)})
		}
	}
	t6 := c.AddTable(guardTable6)
	ch6 := c.AddChain(&nftables.Chain{
		Name:     guardChain,
		Table:    t6,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRaw,
		Policy:   &policy,
	})
	c.AddRule(&nftables.Rule{Table: t6, Chain: ch6, Exprs: vxlan6Rule()})
	return nil
}

// vxlan6Rule is `udp dport 4789 iifname != "shw-wg" counter drop`.
func vxlan6Rule() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, overlay.VXLANPort)},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(overlay.TunnelName)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// Offsets in the IPv4 and transport headers.
const (
	ipSaddr = 12
	ipDaddr = 16
	thDport = 2
)

// vxlanRule is `udp dport 4789 ip saddr != @vxlan-peers counter drop`.
func vxlanRule(peers *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, overlay.VXLANPort)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: peers.Name, SetID: peers.ID, Invert: true},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// dnsRule is `ip daddr GW <proto> dport PORT iifname != BRIDGE counter drop`.
func dnsRule(gw gatewayGuard, proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipDaddr, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: gw.addr.AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(gw.bridge)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// ifname is an interface name as nftables compares it: NUL-padded to
// IFNAMSIZ.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
