package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/internal/dispatch"
	"github.com/shoal-project/shoal/network/lb/internal/nfttest"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

// TestConformance runs the suite every backend passes against the kernel, in
// a throwaway namespace per case.
func TestConformance(t *testing.T) {
	lbtest.RequireRoot(t)
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		_, ns := lbtest.NewNetNS(t)
		b, err := New(WithNetNS(ns), WithTable(conformanceTable))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		return conformanceInstance(b, func(t testing.TB) tableConn {
			c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
			if err != nil {
				t.Fatalf("open nftables connection: %v", err)
			}
			return c
		})
	})
}

// TestConformanceFake runs the same suite without a kernel, against
// nfttest's fake: the rule planning passes it without root, and the fake,
// read back as the kernel is, keeps what the kernel keeps.
func TestConformanceFake(t *testing.T) {
	lbtest.Run(t, func(t *testing.T) lbtest.Instance {
		c := nfttest.New()
		b, err := New(withConn(c, &fakeConntrack{}), WithTable(conformanceTable))
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { b.Close() })
		return conformanceInstance(b, func(testing.TB) tableConn { return c })
	})
}

const conformanceTable = "shoal-lb-conformance"

// tableConn is what the conformance instance needs to look behind a
// Balancer: read its table back, and change it behind its back.
type tableConn interface {
	ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error)
	ListChainsOfTableFamily(family nftables.TableFamily) ([]*nftables.Chain, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	GetSetByName(t *nftables.Table, name string) (*nftables.Set, error)
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)
	FlushSet(s *nftables.Set)
	Flush() error
}

// conformanceInstance is b, read back and tampered with through the
// connections open makes.
func conformanceInstance(b *Balancer, open func(t testing.TB) tableConn) lbtest.Instance {
	return lbtest.Instance{
		Balancer: b,
		Read:     func(t testing.TB) map[string]lbtest.Programmed { return readTable(t, open(t), conformanceTable) },
		Tamper: func(t testing.TB) {
			c := open(t)
			tbl := &nftables.Table{Name: conformanceTable, Family: nftables.TableFamilyINet}
			c.FlushSet(&nftables.Set{Table: tbl, Name: dispatch.SetPublished})
			if err := c.Flush(); err != nil {
				t.Fatalf("flush map %s: %v", dispatch.SetPublished, err)
			}
		},
		FailNext: func() {
			b.beforeFlush = func(c conn, tbl *nftables.Table) {
				b.beforeFlush = nil
				// An element jumping to a missing chain makes the kernel
				// refuse the whole transaction.
				c.SetAddElements(&nftables.Set{Table: tbl, Name: dispatch.SetPublished}, []nftables.SetElement{{
					Key:         []byte{17, 0, 0, 0, 0x10, 0x00, 0, 0},
					VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "no-such-chain"},
				}})
			}
		},
	}
}

// readTable reads the balancer's table back from the kernel: each map
// element (named by its comment) with the backends its chain spreads over.
// Chains nothing leads to are reported under names of their own, so a
// leftover fails the suite.
func readTable(t testing.TB, c tableConn, table string) map[string]lbtest.Programmed {
	t.Helper()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	out := map[string]lbtest.Programmed{}
	if !slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == table }) {
		return out
	}
	tbl := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatalf("list chains: %v", err)
	}
	unreached := map[string]bool{}
	for _, ch := range chains {
		if ch.Table.Name == table && strings.HasPrefix(ch.Name, "fe-") {
			unreached[ch.Name] = true
		}
	}
	rules := func(chain string) []*nftables.Rule {
		rs, err := c.GetRules(tbl, &nftables.Chain{Name: chain, Table: tbl})
		if err != nil {
			t.Fatalf("rules of chain %s: %v", chain, err)
		}
		return rs
	}
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
	for _, set := range []string{dispatch.SetPublished, dispatch.SetVIP4, dispatch.SetVIP6, dispatch.SetVIP4Any, dispatch.SetVIP6Any} {
		for _, e := range elements(set) {
			p := lbtest.Programmed{Key: elementKeyString(t, set, e.Key)}
			feChain := verdictChain(t, e)
			delete(unreached, feChain)
			masq := map[bool]int{}
			for _, r := range rules(feChain) {
				// A frontend with backends has one rule: nfproto, the
				// mark, numgen, a DNAT map, DNAT.
				if !slices.ContainsFunc(r.Exprs, func(x expr.Any) bool { _, ok := x.(*expr.NAT); return ok }) {
					continue
				}
				masq[slices.ContainsFunc(r.Exprs, isMarkSet)]++
				for _, x := range r.Exprs {
					switch x := x.(type) {
					case *expr.Lookup:
						for _, be := range elements(x.SetName) {
							p.Backends = append(p.Backends, dnatMapBackend(t, be))
						}
					case *expr.Numgen:
						defer func(mod uint32) {
							if int(mod) != len(p.Backends) {
								t.Errorf("frontend %s: numgen mod %d over %d backends", e.Comment, mod, len(p.Backends))
							}
						}(x.Modulus)
					}
				}
			}
			slices.Sort(p.Backends)
			p.Masquerade = masq[true] > 0
			if masq[true] > 0 && masq[false] > 0 {
				t.Errorf("frontend %s: %d DNAT rules mark for masquerade, %d do not", e.Comment, masq[true], masq[false])
			}
			out[e.Comment] = p
		}
	}
	for ch := range unreached {
		out["unreached chain "+ch] = lbtest.Programmed{}
	}
	return out
}

func isMarkSet(x expr.Any) bool {
	m, ok := x.(*expr.Meta)
	return ok && m.Key == expr.MetaKeyMARK && m.SourceRegister
}

// dnatMapBackend reads an element of a DNAT map: address . port, the port
// padded to 4 bytes, or a bare address (any-port VIPs: port 0).
func dnatMapBackend(t testing.TB, e nftables.SetElement) string {
	t.Helper()
	if len(e.Val) == 4 || len(e.Val) == 16 {
		addr, _ := netip.AddrFromSlice(e.Val)
		return lb.Backend{Addr: addr}.String()
	}
	if len(e.Val) != 8 && len(e.Val) != 20 {
		t.Fatalf("DNAT map element %x: value %x is not address . port", e.Key, e.Val)
	}
	addr, _ := netip.AddrFromSlice(e.Val[:len(e.Val)-4])
	return netip.AddrPortFrom(addr, binary.BigEndian.Uint16(e.Val[len(e.Val)-4:])).String()
}

// verdictChain returns the chain a map element jumps or goes to. The library
// leaves a read element's verdict undecoded in Val: the nested
// NFTA_VERDICT_CODE and NFTA_VERDICT_CHAIN attributes (the fake decodes it).
func verdictChain(t testing.TB, e nftables.SetElement) string {
	t.Helper()
	if e.VerdictData != nil {
		return e.VerdictData.Chain
	}
	ad, err := mdnetlink.NewAttributeDecoder(e.Val)
	if err != nil {
		t.Fatalf("element %x: decode verdict: %v", e.Key, err)
	}
	var chain string
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			chain = ad.String()
		}
	}
	if err := ad.Err(); err != nil || chain == "" {
		t.Fatalf("element %x: no verdict chain in %x (%v)", e.Key, e.Val, err)
	}
	return chain
}

// elementKeyString turns a map key back into lb.Key's form.
func elementKeyString(t testing.TB, set string, key []byte) string {
	var vip netip.Addr
	switch set {
	case dispatch.SetVIP4, dispatch.SetVIP4Any:
		vip, _ = netip.AddrFromSlice(key[:4])
		key = key[4:]
	case dispatch.SetVIP6, dispatch.SetVIP6Any:
		vip, _ = netip.AddrFromSlice(key[:16])
		key = key[16:]
	}
	if set == dispatch.SetVIP4Any || set == dispatch.SetVIP6Any {
		// proto, padded; the port is "any" (0).
		if len(key) != 4 {
			t.Errorf("map %s: key %x has the wrong length", set, key)
			return fmt.Sprintf("bad key %x", key)
		}
		key = append(key, 0, 0, 0, 0)
	}
	if len(key) != 8 {
		t.Errorf("map %s: key %x has the wrong length", set, key)
		return fmt.Sprintf("bad key %x", key)
	}
	proto := lb.Protocol(fmt.Sprint(key[0]))
	switch key[0] {
	case 6:
		proto = lb.TCP
	case 17:
		proto = lb.UDP
	}
	return lb.Key(lb.Frontend{Protocol: proto, Port: binary.BigEndian.Uint16(key[4:6]), VIP: vip})
}
