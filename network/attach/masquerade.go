package attach

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NATTable and NATChain hold the egress masquerade rules, one per overlay
// subnet: traffic from the subnet to anywhere outside it leaves with the
// node's address, so tasks reach the world with no route back to the overlay.
const (
	NATTable = "shoal-nat"
	NATChain = "postrouting"
)

// ruleTag marks a rule as the masquerade rule of one subnet, so Ensure finds
// it again instead of adding a second and Remove knows which to delete.
func ruleTag(subnet netip.Prefix) []byte { return []byte("shoal:masquerade:" + subnet.String()) }

// Masquerader keeps the shoal-nat table of one network namespace.
type Masquerader struct {
	ns netns.NsHandle // open for the lifetime of the Masquerader; -1 is the caller's
}

// NewMasquerader works in the namespace at netNSPath (empty: the caller's).
func NewMasquerader(netNSPath string) (*Masquerader, error) {
	if netNSPath == "" {
		return &Masquerader{ns: netns.None()}, nil
	}
	ns, err := netns.GetFromPath(netNSPath)
	if err != nil {
		return nil, fmt.Errorf("masquerade: open network namespace %s: %w", netNSPath, err)
	}
	return &Masquerader{ns: ns}, nil
}

// Close releases the namespace; the rules stay.
func (m *Masquerader) Close() error {
	if m.ns.IsOpen() {
		return m.ns.Close()
	}
	return nil
}

func (m *Masquerader) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if m.ns.IsOpen() {
		opts = append(opts, nftables.WithNetNSFd(int(m.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

var (
	natTable = &nftables.Table{Name: NATTable, Family: nftables.TableFamilyIPv4}
	natChain = &nftables.Chain{
		Name:     NATChain,
		Table:    natTable,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	}
)

// rules returns the chain's rules, none when the table does not exist.
func rules(c *nftables.Conn) ([]*nftables.Rule, error) {
	rs, err := c.GetRules(natTable, natChain)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	return rs, err
}

// Ensure adds the masquerade rule of subnet unless it is there.
func (m *Masquerader) Ensure(subnet netip.Prefix) error {
	if !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Masked() != subnet {
		return fmt.Errorf("masquerade %v: need an IPv4 network prefix", subnet)
	}
	c, err := m.conn()
	if err != nil {
		return err
	}
	rs, err := rules(c)
	if err != nil {
		return fmt.Errorf("masquerade %s: list rules: %w", subnet, err)
	}
	for _, r := range rs {
		if string(r.UserData) == string(ruleTag(subnet)) {
			return nil
		}
	}
	c.AddTable(natTable)
	c.AddChain(natChain)
	c.AddRule(&nftables.Rule{
		Table:    natTable,
		Chain:    natChain,
		Exprs:    masqueradeExprs(subnet),
		UserData: ruleTag(subnet),
	})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade %s: add rule: %w", subnet, err)
	}
	return nil
}

// masqueradeExprs is `ip saddr SUBNET ip daddr != SUBNET masquerade`: traffic
// between tasks of the overlay keeps its addresses.
func masqueradeExprs(subnet netip.Prefix) []expr.Any {
	mask := net.CIDRMask(subnet.Bits(), 32)
	network := subnet.Addr().AsSlice()
	match := func(offset uint32, op expr.CmpOp) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: op, Register: 1, Data: network},
		}
	}
	const saddr, daddr = 12, 16 // offsets in the IPv4 header
	exprs := append(match(saddr, expr.CmpOpEq), match(daddr, expr.CmpOpNeq)...)
	return append(exprs, &expr.Masq{})
}

// Remove deletes the masquerade rule of subnet, and the table once it holds
// no rule. Removing a rule that is not there is not an error.
func (m *Masquerader) Remove(subnet netip.Prefix) error {
	c, err := m.conn()
	if err != nil {
		return err
	}
	rs, err := rules(c)
	if err != nil {
		return fmt.Errorf("masquerade %s: list rules: %w", subnet, err)
	}
	left := 0
	for _, r := range rs {
		if string(r.UserData) != string(ruleTag(subnet)) {
			left++
			continue
		}
		if err := c.DelRule(r); err != nil {
			return fmt.Errorf("masquerade %s: remove rule: %w", subnet, err)
		}
	}
	if left == 0 && len(rs) > 0 {
		c.DelTable(natTable)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("masquerade %s: remove rule: %w", subnet, err)
	}
	return nil
}

// Subnets returns the subnets that have a masquerade rule, for a caller
// reconciling after a restart.
func (m *Masquerader) Subnets() ([]netip.Prefix, error) {
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	rs, err := rules(c)
	if err != nil {
		return nil, fmt.Errorf("masquerade: list rules: %w", err)
	}
	var out []netip.Prefix
	for _, r := range rs {
		var s string
		if _, err := fmt.Sscanf(string(r.UserData), "shoal:masquerade:%s", &s); err != nil {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}
