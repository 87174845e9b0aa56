package nfttest

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

var tbl = &nftables.Table{Name: "t", Family: nftables.TableFamilyINet}

func verdictMap(name string) *nftables.Set {
	return &nftables.Set{Table: tbl, Name: name, IsMap: true, KeyType: nftables.TypeInetService, DataType: nftables.TypeVerdict}
}

func goTo(port uint16, chain string) nftables.SetElement {
	return nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(port), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}}
}

// setup makes table t with map ports (port 80 goes to chain web) and a
// rule in chain dispatch that looks ports up.
func setup(t *testing.T) *Conn {
	t.Helper()
	c := New()
	c.AddTable(tbl)
	c.AddChain(&nftables.Chain{Name: "web", Table: tbl})
	m := verdictMap("ports")
	c.AddSet(m, []nftables.SetElement{goTo(80, "web")})
	c.AddChain(&nftables.Chain{Name: "dispatch", Table: tbl})
	c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "dispatch", Table: tbl}, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
	}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRefusesWhatTheKernelRefuses(t *testing.T) {
	tests := []struct {
		name  string
		queue func(c *Conn)
		want  error
	}{
		{"chain still in a map", func(c *Conn) { c.DelChain(&nftables.Chain{Name: "web", Table: tbl}) }, unix.EBUSY},
		{"element to a missing chain", func(c *Conn) { c.SetAddElements(verdictMap("ports"), []nftables.SetElement{goTo(81, "nope")}) }, unix.ENOENT},
		{"element again, elsewhere", func(c *Conn) {
			c.AddChain(&nftables.Chain{Name: "api", Table: tbl})
			c.SetAddElements(verdictMap("ports"), []nftables.SetElement{goTo(80, "api")})
		}, unix.EEXIST},
		{"missing element", func(c *Conn) {
			c.SetDeleteElements(verdictMap("ports"), []nftables.SetElement{{Key: binaryutil.BigEndian.PutUint16(81)}})
		}, unix.ENOENT},
		{"key of the wrong length", func(c *Conn) {
			c.SetAddElements(verdictMap("ports"), []nftables.SetElement{{Key: []byte{1, 2, 3}, VerdictData: &expr.Verdict{Kind: expr.VerdictAccept}}})
		}, unix.EINVAL},
		{"missing table", func(c *Conn) { c.DelTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet}) }, unix.ENOENT},
		{"rule in a missing chain", func(c *Conn) {
			c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "nope", Table: tbl}, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		}, unix.ENOENT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := setup(t)
			before := c.Ruleset()
			c.AddChain(&nftables.Chain{Name: "first-in-the-batch", Table: tbl})
			tt.queue(c)
			if err := c.Flush(); !errors.Is(err, tt.want) {
				t.Fatalf("Flush: %v, want %v", err, tt.want)
			}
			if got := c.Ruleset(); got != before {
				t.Errorf("a refused batch changed the ruleset:\n%s", got)
			}
		})
	}
}

func TestDeleteChainOnceNothingJumpsToIt(t *testing.T) {
	c := setup(t)
	c.SetDeleteElements(verdictMap("ports"), []nftables.SetElement{{Key: binaryutil.BigEndian.PutUint16(80)}})
	c.DelChain(&nftables.Chain{Name: "web", Table: tbl})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	want := []string{"delete element inet t ports { 80 }", "delete chain inet t web"}
	if got := c.LastBatch().Ops; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("batch %q, want %q", got, want)
	}
	if strings.Contains(c.Ruleset(), "web") {
		t.Errorf("chain web left:\n%s", c.Ruleset())
	}
}

func TestAnonymousSetsGoWithTheirRule(t *testing.T) {
	c := setup(t)
	rule := func() {
		m := &nftables.Set{Table: tbl, Anonymous: true, Constant: true, IsMap: true,
			KeyType: nftables.TypeInteger, KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeIPAddr}
		c.AddSet(m, []nftables.SetElement{{Key: binaryutil.NativeEndian.PutUint32(0), Val: []byte{10, 0, 0, 1}}})
		c.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: "web", Table: tbl}, Exprs: []expr.Any{
			&expr.Numgen{Register: 1, Modulus: 1, Type: unix.NFT_NG_RANDOM},
			&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.Name, SetID: m.ID},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1},
		}})
	}
	rule()
	rule()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	const text = "dnat ip to numgen random mod 1 map { 0 : 10.0.0.1 }"
	if got := strings.Count(c.Ruleset(), text); got != 2 {
		t.Errorf("%d rules read %q:\n%s", got, text, c.Ruleset())
	}
	rules, err := c.GetRules(tbl, &nftables.Chain{Name: "web", Table: tbl})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rules {
		l := r.Exprs[1].(*expr.Lookup)
		names = append(names, l.SetName)
		if _, err := c.GetSetByName(tbl, l.SetName); err != nil {
			t.Errorf("set %s of a rule: %v", l.SetName, err)
		}
	}
	if strings.Join(names, ",") != "__map0,__map1" {
		t.Errorf("anonymous sets named %v, want __map0 and __map1 as the kernel names them", names)
	}
	c.FlushChain(&nftables.Chain{Name: "web", Table: tbl})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetSetByName(tbl, "__map0"); !errors.Is(err, unix.ENOENT) {
		t.Errorf("anonymous set after its rule went: %v", err)
	}
}
