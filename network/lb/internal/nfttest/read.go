package nfttest

import (
	"fmt"
	"maps"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The methods of *nftables.Conn that read the ruleset back, over the
// ruleset as of the last successful Flush, so that code that reads a
// kernel's tables reads the fake's the same way. Rules refer to their
// anonymous sets by the names the kernel gives them, and those sets can
// be read by name, as from a kernel. Unlike the library, which leaves a
// verdict map element's verdict encoded in Val, elements carry it in
// VerdictData.

// ListTablesOfFamily returns the tables of family f.
func (c *Conn) ListTablesOfFamily(f nftables.TableFamily) ([]*nftables.Table, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Table
	for _, k := range c.committed.sortedKeys() {
		if k.family == f {
			out = append(out, &nftables.Table{Name: k.name, Family: k.family})
		}
	}
	return out, nil
}

// ListChainsOfTableFamily returns the chains of every table of family f.
func (c *Conn) ListChainsOfTableFamily(f nftables.TableFamily) ([]*nftables.Chain, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*nftables.Chain
	for _, k := range c.committed.sortedKeys() {
		if k.family != f {
			continue
		}
		t := c.committed.tables[k]
		for _, n := range slices.Sorted(maps.Keys(t.chains)) {
			ch := t.chains[n].spec
			ch.Table = &nftables.Table{Name: k.name, Family: k.family}
			out = append(out, &ch)
		}
	}
	return out, nil
}

// GetRules returns the rules of chain ch of table t.
func (c *Conn) GetRules(t *nftables.Table, ch *nftables.Chain) ([]*nftables.Rule, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tb := c.committed.tables[tableKeyOf(t)]
	if tb == nil || tb.chains[ch.Name] == nil {
		return nil, fmt.Errorf("chain %s %s: %w", tableKeyOf(t), ch.Name, unix.ENOENT)
	}
	var out []*nftables.Rule
	for _, r := range tb.chains[ch.Name].rules {
		out = append(out, &nftables.Rule{Table: t, Chain: ch, Exprs: slices.Clone(r.exprs)})
	}
	return out, nil
}

// GetSetByName returns the set or map called name in table t.
func (c *Conn) GetSetByName(t *nftables.Table, name string) (*nftables.Set, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tb := c.committed.tables[tableKeyOf(t)]
	if tb == nil {
		return nil, fmt.Errorf("table %s: %w", tableKeyOf(t), unix.ENOENT)
	}
	s, err := tb.lookup(name, 0)
	if err != nil {
		return nil, err
	}
	spec := s.spec
	spec.Table = t
	return &spec, nil
}

// GetSetElements returns the elements of s: an anonymous set's in the
// order they were given, a named set's by key.
func (c *Conn) GetSetElements(s *nftables.Set) ([]nftables.SetElement, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tb := c.committed.tables[tableKeyOf(s.Table)]
	if tb == nil {
		return nil, fmt.Errorf("table %s: %w", tableKeyOf(s.Table), unix.ENOENT)
	}
	st, err := tb.lookup(s.Name, 0)
	if err != nil {
		return nil, err
	}
	keys := st.order
	if !st.spec.Anonymous {
		keys = slices.Sorted(maps.Keys(st.elems))
	}
	out := make([]nftables.SetElement, 0, len(keys))
	for _, k := range keys {
		e := st.elems[k]
		var v *expr.Verdict
		if e.verdict != nil {
			vd := *e.verdict
			v = &vd
		}
		out = append(out, nftables.SetElement{Key: slices.Clone(e.key), Val: slices.Clone(e.val), VerdictData: v, Comment: e.comment})
	}
	return out, nil
}
