// Package dispatch holds what the two load balancer backends share in
// nftables: the maps that find a frontend from a packet's destination
// (published ports on the node's own addresses, VIPs on one port, VIPs on
// any port), their element keys, and the rules that look packets up in
// them. The nft backend's maps hold verdicts (a jump to the frontend's
// chain); the IPVS backend's marker maps hold the fwmark of the frontend's
// IPVS service.
package dispatch

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the maps in a backend's table.
const (
	SetPublished = "published"
	SetVIP4      = "vip4"
	SetVIP6      = "vip6"
	SetVIP4Any   = "vip4any"
	SetVIP6Any   = "vip6any"
)

// rtnLocal is RTN_LOCAL, the fib address type of the node's own addresses.
const rtnLocal = 2

// Registers: the concatenated keys start at NFT_REG_1, the first 128-bit
// register, which is NFT_REG32_00..03; an IPv4 address fills the first
// 32-bit register, an IPv6 address all four.
const (
	reg1     = 1 // NFT_REG_1
	reg32_00 = 8 // NFT_REG32_00
)

// Maps are the dispatch maps of one table.
type Maps struct {
	Published, VIP4, VIP6, VIP4Any, VIP6Any *nftables.Set
}

// NewMaps describes the maps of table t, mapping to data (verdicts or marks).
func NewMaps(t *nftables.Table, data nftables.SetDatatype) Maps {
	m := func(name string, key ...nftables.SetDatatype) *nftables.Set {
		return &nftables.Set{Table: t, Name: name, IsMap: true, Concatenation: true,
			KeyType: nftables.MustConcatSetType(key...), DataType: data}
	}
	return Maps{
		Published: m(SetPublished, nftables.TypeInetProto, nftables.TypeInetService),
		VIP4:      m(SetVIP4, nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		VIP6:      m(SetVIP6, nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService),
		VIP4Any:   m(SetVIP4Any, nftables.TypeIPAddr, nftables.TypeInetProto),
		VIP6Any:   m(SetVIP6Any, nftables.TypeIP6Addr, nftables.TypeInetProto),
	}
}

// All lists the maps.
func (m Maps) All() []*nftables.Set {
	return []*nftables.Set{m.Published, m.VIP4, m.VIP6, m.VIP4Any, m.VIP6Any}
}

// Element returns the map a frontend's element lives in and its key: a
// published port (vip invalid), a VIP on one port, or a VIP on any port
// (port 0). Each part of a concatenated key is padded to 4 bytes, as the
// kernel's registers are.
func (m Maps) Element(proto uint8, port uint16, vip netip.Addr) (*nftables.Set, []byte) {
	var key []byte
	s := m.Published
	switch {
	case vip.IsValid() && port == 0:
		s = m.VIP4Any
		if vip.Is6() {
			s = m.VIP6Any
		}
		key = append(key, vip.AsSlice()...)
		return s, append(key, proto, 0, 0, 0)
	case vip.IsValid():
		s = m.VIP4
		if vip.Is6() {
			s = m.VIP6
		}
		key = append(key, vip.AsSlice()...)
	}
	key = append(key, proto, 0, 0, 0)
	key = append(key, byte(port>>8), byte(port), 0, 0)
	return s, key
}

// Then is what a rule does once the packet's key is loaded into the
// registers from keyReg: look it up in set and act on the result.
type Then func(set *nftables.Set, keyReg uint32) []expr.Any

// Rules are one rule per map family: each loads the packet's key for the
// map and ends with then. Loopback destinations are left alone for
// published ports: DNAT or masquerade from 127.0.0.1 to another host needs
// route_localnet and is refused as martian otherwise (kube-proxy skips
// them too). With anyPortFirst the any-port VIP rules come before the
// exact ones (for maps whose later match overrides an earlier one, like a
// mark); otherwise after (for verdicts, where the first match wins), so a
// frontend on one port of a VIP always wins over the VIP's any-port one.
func (m Maps) Rules(then Then, anyPortFirst bool) [][]expr.Any {
	nfproto := func(p byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
		}
	}
	// l4 loads l4proto and dport into the registers from first.
	l4 := func(first uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: first},
			&expr.Payload{DestRegister: first + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		}
	}
	daddr4 := func() []expr.Any {
		return append(nfproto(unix.NFPROTO_IPV4), &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4})
	}
	daddr6 := func() []expr.Any {
		return append(nfproto(unix.NFPROTO_IPV6), &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16})
	}
	local := []expr.Any{
		&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(rtnLocal)},
	}
	loopback6 := [16]byte{15: 1}
	exact := [][]expr.Any{
		slices.Concat(daddr4(), l4(reg32_00+1), then(m.VIP4, reg1)),
		slices.Concat(daddr6(), l4(reg32_00+4), then(m.VIP6, reg1)),
	}
	anyPort := [][]expr.Any{
		slices.Concat(daddr4(), l4(reg32_00 + 1)[:1], then(m.VIP4Any, reg1)),
		slices.Concat(daddr6(), l4(reg32_00 + 4)[:1], then(m.VIP6Any, reg1)),
	}
	published := [][]expr.Any{
		slices.Concat(local, nfproto(unix.NFPROTO_IPV4), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{127}},
		}, l4(reg32_00), then(m.Published, reg1)),
		slices.Concat(local, nfproto(unix.NFPROTO_IPV6), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 16},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: loopback6[:]},
		}, l4(reg32_00), then(m.Published, reg1)),
	}
	if anyPortFirst {
		return slices.Concat(anyPort, exact, published)
	}
	return slices.Concat(exact, anyPort, published)
}

// Decode is Element's inverse, for reading a table back: the protocol,
// port (0 for any) and VIP (invalid for published ports) an element of the
// map named set stands for.
func Decode(set string, key []byte) (proto uint8, port uint16, vip netip.Addr, err error) {
	addrLen := map[string]int{SetPublished: 0, SetVIP4: 4, SetVIP4Any: 4, SetVIP6: 16, SetVIP6Any: 16}
	n, ok := addrLen[set]
	if !ok {
		return 0, 0, netip.Addr{}, fmt.Errorf("%q is no dispatch map", set)
	}
	want := n + 8
	if set == SetVIP4Any || set == SetVIP6Any {
		want = n + 4
	}
	if len(key) != want {
		return 0, 0, netip.Addr{}, fmt.Errorf("map %s: key %x is %d bytes, want %d", set, key, len(key), want)
	}
	if n > 0 {
		vip, _ = netip.AddrFromSlice(key[:n])
	}
	proto = key[n]
	if len(key) == n+8 {
		port = uint16(key[n+4])<<8 | uint16(key[n+5])
	}
	return proto, port, vip, nil
}
