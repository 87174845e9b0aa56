// Package nfttest is a fake nftables connection for unit tests of the code
// that programs nftables, so that rule planning is tested without root, the
// way kube-proxy tests its rules: Conn has the methods of *nftables.Conn
// that queue a transaction, and Flush applies the queued operations to an
// in-memory ruleset as the kernel does: in order, all or nothing, and
// refusing what the kernel refuses (a missing table, chain, set or element,
// a chain that is still jumped to, an element added again with other data,
// a rule or element that jumps to a missing chain, a key of the wrong
// length). Ruleset prints the result as `nft list ruleset` does; Batches
// are the operations of every Flush, as nft commands, so a test can check
// what one change touched.
//
// It models the parts of nftables shoal uses (tables, base and regular
// chains, named and anonymous sets and maps, rules) and prints the
// expressions shoal's rules are made of in nft's syntax; any other
// expression is printed as its Go value, so nothing is hidden.
//
// It is test support: only _test files import it.
package nfttest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Conn is a fake *nftables.Conn. The zero value is not usable: call New.
type Conn struct {
	mu      sync.Mutex
	pending []op
	// committed is the ruleset as of the last successful Flush.
	committed *ruleset
	batches   []Batch
	// setID numbers sets as the library does, so anonymous sets get the
	// names the library gives them.
	setID uint32
}

// Batch is what one Flush sent: its operations as nft commands, in order,
// and the error that refused it (nil when it was applied).
type Batch struct {
	Ops []string
	Err error
}

// op is one queued operation: it changes rs and says what it did as an nft
// command.
type op func(rs *ruleset) (string, error)

// New returns a Conn with an empty ruleset.
func New() *Conn {
	return &Conn{committed: newRuleset()}
}

// Ruleset is the ruleset as of the last successful Flush, in the form of
// `nft list ruleset`.
func (c *Conn) Ruleset() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.committed.String()
}

// Batches are the batches sent by every Flush so far, the last one last.
func (c *Conn) Batches() []Batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.batches)
}

// LastBatch is the batch the last Flush sent.
func (c *Conn) LastBatch() Batch {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.batches) == 0 {
		return Batch{}
	}
	return c.batches[len(c.batches)-1]
}

func (c *Conn) queue(o op) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending = append(c.pending, o)
}

// Flush applies the queued operations to a copy of the ruleset and keeps
// the copy only if every one of them succeeded, like the kernel's
// transactions.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	pending := c.pending
	c.pending = nil
	rs := c.committed.clone()
	var b Batch
	for _, o := range pending {
		text, err := o(rs)
		if text != "" {
			b.Ops = append(b.Ops, text)
		}
		if err != nil {
			b.Err = fmt.Errorf("%s: %w", text, err)
			break
		}
	}
	c.batches = append(c.batches, b)
	if b.Err != nil {
		return b.Err
	}
	for _, t := range rs.tables {
		// Anonymous sets live as long as the transaction that made them;
		// the rules that use them have their elements.
		clear(t.anon)
	}
	c.committed = rs
	return nil
}

// CloseLasting does nothing: there is no socket.
func (c *Conn) CloseLasting() error { return nil }

// AddTable queues the creation of t; an existing table is kept.
func (c *Conn) AddTable(t *nftables.Table) *nftables.Table {
	key := tableKeyOf(t)
	c.queue(func(rs *ruleset) (string, error) {
		if rs.tables[key] == nil {
			rs.tables[key] = newTable(key)
		}
		return "add table " + key.String(), nil
	})
	return t
}

// DelTable queues the deletion of t and everything in it.
func (c *Conn) DelTable(t *nftables.Table) {
	key := tableKeyOf(t)
	c.queue(func(rs *ruleset) (string, error) {
		text := "delete table " + key.String()
		if rs.tables[key] == nil {
			return text, unix.ENOENT
		}
		delete(rs.tables, key)
		return text, nil
	})
}

// AddChain queues the creation of ch; an existing chain is kept.
func (c *Conn) AddChain(ch *nftables.Chain) *nftables.Chain {
	spec := *ch
	key := tableKeyOf(ch.Table)
	c.queue(func(rs *ruleset) (string, error) {
		text := fmt.Sprintf("add chain %s %s", key, spec.Name)
		if spec.Hooknum != nil {
			text += " { " + baseChainSpec(&spec) + " }"
		}
		t := rs.tables[key]
		if t == nil {
			return text, unix.ENOENT
		}
		if t.chains[spec.Name] == nil {
			t.chains[spec.Name] = &chain{spec: spec}
		}
		return text, nil
	})
	return ch
}

// FlushChain queues the removal of ch's rules.
func (c *Conn) FlushChain(ch *nftables.Chain) {
	key, name := tableKeyOf(ch.Table), ch.Name
	c.queue(func(rs *ruleset) (string, error) {
		text := fmt.Sprintf("flush chain %s %s", key, name)
		t := rs.tables[key]
		if t == nil || t.chains[name] == nil {
			return text, unix.ENOENT
		}
		t.unbind(t.chains[name].rules)
		t.chains[name].rules = nil
		return text, nil
	})
}

// DelChain queues the deletion of ch and its rules. The kernel refuses to
// delete a chain that a rule or a map element still jumps to.
func (c *Conn) DelChain(ch *nftables.Chain) {
	key, name := tableKeyOf(ch.Table), ch.Name
	c.queue(func(rs *ruleset) (string, error) {
		text := fmt.Sprintf("delete chain %s %s", key, name)
		t := rs.tables[key]
		if t == nil || t.chains[name] == nil {
			return text, unix.ENOENT
		}
		if by := t.jumpsTo(name); by != "" {
			return text, fmt.Errorf("%w: %s jumps to it", unix.EBUSY, by)
		}
		t.unbind(t.chains[name].rules)
		delete(t.chains, name)
		return text, nil
	})
}

// AddRule queues r at the end of its chain.
func (c *Conn) AddRule(r *nftables.Rule) *nftables.Rule {
	key, name := tableKeyOf(r.Table), r.Chain.Name
	exprs := slices.Clone(r.Exprs)
	c.queue(func(rs *ruleset) (string, error) {
		t := rs.tables[key]
		if t == nil {
			return fmt.Sprintf("add rule %s %s", key, name), unix.ENOENT
		}
		text, err := renderRule(t, exprs)
		line := fmt.Sprintf("add rule %s %s %s", key, name, text)
		if err != nil {
			return line, err
		}
		ch := t.chains[name]
		if ch == nil {
			return line, fmt.Errorf("chain %s: %w", name, unix.ENOENT)
		}
		for _, target := range jumpTargets(exprs) {
			if t.chains[target] == nil {
				return line, fmt.Errorf("jump to chain %s: %w", target, unix.ENOENT)
			}
		}
		exprs, anon := t.bind(exprs)
		ch.rules = append(ch.rules, rule{exprs: exprs, text: text, anon: anon})
		return line, nil
	})
	return r
}

// AddSet queues the creation of s with vals. Like the library, it names
// and numbers s when it has no id yet, so that rules can refer to it
// before the batch is sent.
func (c *Conn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	if s.Anonymous && !s.Constant {
		return errors.New("anonymous structs must be constant")
	}
	c.mu.Lock()
	if s.ID == 0 {
		c.setID++
		s.ID = c.setID
		if s.Anonymous {
			s.Name = "__set%d"
			if s.IsMap {
				s.Name = "__map%d"
			}
		}
	}
	c.mu.Unlock()
	spec := *s
	key := tableKeyOf(s.Table)
	vals = cloneElements(vals)
	c.queue(func(rs *ruleset) (string, error) {
		st := &set{spec: spec, elems: map[string]element{}}
		text := fmt.Sprintf("add %s %s %s { %s }", st.kind(), key, spec.Name, st.typeSpec())
		t := rs.tables[key]
		if t == nil {
			return text, unix.ENOENT
		}
		if spec.Anonymous {
			t.anon[spec.ID] = st
		} else if t.sets[spec.Name] == nil {
			t.sets[spec.Name] = st
		} else {
			st = t.sets[spec.Name]
		}
		if err := st.add(t, vals); err != nil {
			return text, err
		}
		if spec.Anonymous {
			// nft writes anonymous sets out in the rules that use them.
			return "", nil
		}
		return text, nil
	})
	return nil
}

// SetAddElements queues the addition of vals to s.
func (c *Conn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.queueElements("add", s, vals, (*set).add)
}

// SetDeleteElements queues the removal of the elements with vals' keys
// from s.
func (c *Conn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.queueElements("delete", s, vals, func(st *set, _ *table, vals []nftables.SetElement) error {
		for _, v := range vals {
			if _, ok := st.elems[string(v.Key)]; !ok {
				return fmt.Errorf("element %s: %w", st.keyText(v.Key), unix.ENOENT)
			}
			delete(st.elems, string(v.Key))
		}
		return nil
	})
}

// queueElements queues change, an add or a delete of vals in named set s.
func (c *Conn) queueElements(verb string, s *nftables.Set, vals []nftables.SetElement, change func(st *set, t *table, vals []nftables.SetElement) error) error {
	if s.Anonymous {
		return errors.New("anonymous sets cannot be updated")
	}
	key, name := tableKeyOf(s.Table), s.Name
	vals = cloneElements(vals)
	c.queue(func(rs *ruleset) (string, error) {
		text := fmt.Sprintf("%s element %s %s", verb, key, name)
		st, err := rs.set(key, name)
		if err != nil {
			return text, err
		}
		// A delete names keys only, as nft does.
		text += " { " + st.elementsText(vals, verb == "add") + " }"
		return text, change(st, rs.tables[key], vals)
	})
	return nil
}

// FlushSet queues the removal of every element of s.
func (c *Conn) FlushSet(s *nftables.Set) {
	key, name := tableKeyOf(s.Table), s.Name
	c.queue(func(rs *ruleset) (string, error) {
		text := fmt.Sprintf("flush set %s %s", key, name)
		st, err := rs.set(key, name)
		if err != nil {
			return text, err
		}
		clear(st.elems)
		return text, nil
	})
}

func cloneElements(vals []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(vals))
	for i, v := range vals {
		v.Key, v.Val = bytes.Clone(v.Key), bytes.Clone(v.Val)
		if v.VerdictData != nil {
			vd := *v.VerdictData
			v.VerdictData = &vd
		}
		out[i] = v
	}
	return out
}

// tableKey names a table: family and name.
type tableKey struct {
	family nftables.TableFamily
	name   string
}

func tableKeyOf(t *nftables.Table) tableKey { return tableKey{t.Family, t.Name} }

func (k tableKey) String() string { return familyName(k.family) + " " + k.name }

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

type ruleset struct {
	tables map[tableKey]*table
}

func newRuleset() *ruleset { return &ruleset{tables: map[tableKey]*table{}} }

func (rs *ruleset) clone() *ruleset {
	out := newRuleset()
	for k, t := range rs.tables {
		out.tables[k] = t.clone()
	}
	return out
}

func (rs *ruleset) set(key tableKey, name string) (*set, error) {
	t := rs.tables[key]
	if t == nil {
		return nil, fmt.Errorf("table %s: %w", key, unix.ENOENT)
	}
	s := t.sets[name]
	if s == nil {
		return nil, fmt.Errorf("set %s: %w", name, unix.ENOENT)
	}
	return s, nil
}

type table struct {
	key    tableKey
	chains map[string]*chain
	sets   map[string]*set
	// anon are the anonymous sets of the batch being applied, by id.
	anon map[uint32]*set
	// bound are the anonymous sets rules use, by the name the kernel gives
	// them (__map0, __set1...); they go with their rule.
	bound map[string]*set
}

func newTable(key tableKey) *table {
	return &table{key: key, chains: map[string]*chain{}, sets: map[string]*set{}, anon: map[uint32]*set{}, bound: map[string]*set{}}
}

func (t *table) clone() *table {
	out := newTable(t.key)
	for n, ch := range t.chains {
		out.chains[n] = &chain{spec: ch.spec, rules: slices.Clone(ch.rules)}
	}
	for n, s := range t.sets {
		out.sets[n] = s.clone()
	}
	for n, s := range t.bound {
		out.bound[n] = s.clone()
	}
	return out
}

// bind gives the anonymous sets of this batch that exprs look up the names
// the kernel gives them, and returns exprs referring to them by those
// names, as a rule read back from the kernel does.
func (t *table) bind(exprs []expr.Any) ([]expr.Any, []string) {
	var names []string
	out := slices.Clone(exprs)
	for i, e := range out {
		l, ok := e.(*expr.Lookup)
		if !ok {
			continue
		}
		s, ok := t.anon[l.SetID]
		if !ok || s.spec.Name != l.SetName {
			continue
		}
		name := ""
		for n := 0; name == "" || t.bound[name] != nil; n++ {
			name = strings.Replace(s.spec.Name, "%d", strconv.Itoa(n), 1)
		}
		b := s.clone()
		b.spec.Name, b.spec.ID = name, 0
		t.bound[name] = b
		names = append(names, name)
		bl := *l
		bl.SetName, bl.SetID = name, 0
		out[i] = &bl
	}
	return out, names
}

// unbind drops the anonymous sets of rules that go.
func (t *table) unbind(rules []rule) {
	for _, r := range rules {
		for _, n := range r.anon {
			delete(t.bound, n)
		}
	}
}

// jumpsTo names a rule or map element that jumps or goes to chain name,
// "" if none does.
func (t *table) jumpsTo(name string) string {
	for _, cn := range slices.Sorted(maps.Keys(t.chains)) {
		for _, r := range t.chains[cn].rules {
			if slices.Contains(jumpTargets(r.exprs), name) {
				return "a rule of chain " + cn
			}
		}
	}
	for _, sn := range slices.Sorted(maps.Keys(t.sets)) {
		for _, e := range t.sets[sn].elems {
			if e.verdict != nil && e.verdict.Chain == name {
				return "an element of map " + sn
			}
		}
	}
	return ""
}

// lookup finds the set a rule refers to: anonymous sets of this batch by
// id, named sets by name.
func (t *table) lookup(name string, id uint32) (*set, error) {
	if s, ok := t.anon[id]; ok && s.spec.Name == name {
		return s, nil
	}
	if s, ok := t.sets[name]; ok {
		return s, nil
	}
	if s, ok := t.bound[name]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("set %s: %w", name, unix.ENOENT)
}

type chain struct {
	spec  nftables.Chain
	rules []rule
}

type rule struct {
	exprs []expr.Any
	// text is the rule as nft prints it, anonymous sets written out.
	text string
	// anon names the anonymous sets bound to the rule.
	anon []string
}

// jumpTargets are the chains a rule's verdicts jump or go to.
func jumpTargets(exprs []expr.Any) []string {
	var out []string
	for _, e := range exprs {
		if v, ok := e.(*expr.Verdict); ok && (v.Kind == expr.VerdictJump || v.Kind == expr.VerdictGoto) {
			out = append(out, v.Chain)
		}
	}
	return out
}

type set struct {
	spec  nftables.Set
	elems map[string]element // by key
	// order is an anonymous set's keys in the order they were given: nft
	// writes anonymous sets out so.
	order []string
}

type element struct {
	key, val []byte
	verdict  *expr.Verdict
	comment  string
}

func (s *set) clone() *set {
	return &set{spec: s.spec, elems: maps.Clone(s.elems), order: slices.Clone(s.order)}
}

// add adds vals; an element that exists already is kept when it maps to
// the same data, and refused when it does not.
func (s *set) add(t *table, vals []nftables.SetElement) error {
	for _, v := range vals {
		if want := s.spec.KeyType.Bytes; want != 0 && uint32(len(v.Key)) != want {
			return fmt.Errorf("element key %x is %d bytes, set %s takes %d: %w", v.Key, len(v.Key), s.spec.Name, want, unix.EINVAL)
		}
		e := element{key: v.Key, val: v.Val, verdict: v.VerdictData, comment: v.Comment}
		if s.spec.IsMap && s.spec.DataType.GetNFTMagic() == nftables.TypeVerdict.GetNFTMagic() {
			if e.verdict == nil {
				return fmt.Errorf("element %s of verdict map %s has no verdict: %w", s.keyText(v.Key), s.spec.Name, unix.EINVAL)
			}
			e.val = nil
			if k := e.verdict.Kind; (k == expr.VerdictJump || k == expr.VerdictGoto) && t.chains[e.verdict.Chain] == nil {
				return fmt.Errorf("element %s jumps to chain %s: %w", s.keyText(v.Key), e.verdict.Chain, unix.ENOENT)
			}
		}
		if want := s.spec.DataType.Bytes; s.spec.IsMap && e.verdict == nil && want != 0 && uint32(len(v.Val)) != want {
			return fmt.Errorf("element %s maps to %x, %d bytes; map %s takes %d: %w", s.keyText(v.Key), v.Val, len(v.Val), s.spec.Name, want, unix.EINVAL)
		}
		if old, ok := s.elems[string(v.Key)]; ok {
			if !bytes.Equal(old.val, e.val) || verdictText(old.verdict) != verdictText(e.verdict) {
				return fmt.Errorf("element %s exists with other data: %w", s.keyText(v.Key), unix.EEXIST)
			}
			continue
		}
		s.elems[string(v.Key)] = e
		if s.spec.Anonymous {
			s.order = append(s.order, string(v.Key))
		}
	}
	return nil
}

func (s *set) kind() string {
	if s.spec.IsMap {
		return "map"
	}
	return "set"
}

// String is the set as `nft list` prints it.
func (s *set) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\t%s %s {\n\t\ttype %s\n", s.kind(), s.spec.Name, s.typeSpec())
	keys := slices.Sorted(maps.Keys(s.elems))
	if len(keys) > 0 {
		b.WriteString("\t\telements = {\n")
		for i, k := range keys {
			sep := ","
			if i == len(keys)-1 {
				sep = ""
			}
			fmt.Fprintf(&b, "\t\t\t%s%s\n", s.elementText(s.elems[k], true), sep)
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n")
	return b.String()
}

func (t *table) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s {\n", t.key)
	var parts []string
	for _, n := range slices.Sorted(maps.Keys(t.sets)) {
		parts = append(parts, t.sets[n].String())
	}
	chains := slices.Collect(maps.Values(t.chains))
	slices.SortFunc(chains, func(a, b *chain) int {
		// Base chains first, in the order packets meet their hooks.
		ah, bh := a.spec.Hooknum != nil, b.spec.Hooknum != nil
		switch {
		case ah && !bh:
			return -1
		case !ah && bh:
			return 1
		case ah && *a.spec.Hooknum != *b.spec.Hooknum:
			return int(*a.spec.Hooknum) - int(*b.spec.Hooknum)
		}
		return strings.Compare(a.spec.Name, b.spec.Name)
	})
	for _, ch := range chains {
		parts = append(parts, ch.String())
	}
	b.WriteString(strings.Join(parts, "\n"))
	b.WriteString("}\n")
	return b.String()
}

func (ch *chain) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\tchain %s {\n", ch.spec.Name)
	if ch.spec.Hooknum != nil {
		fmt.Fprintf(&b, "\t\t%s\n", baseChainSpec(&ch.spec))
	}
	for _, r := range ch.rules {
		fmt.Fprintf(&b, "\t\t%s\n", r.text)
	}
	b.WriteString("\t}\n")
	return b.String()
}

func (rs *ruleset) sortedKeys() []tableKey {
	return slices.SortedFunc(maps.Keys(rs.tables), func(a, b tableKey) int {
		if c := strings.Compare(familyName(a.family), familyName(b.family)); c != 0 {
			return c
		}
		return strings.Compare(a.name, b.name)
	})
}

func (rs *ruleset) String() string {
	var parts []string
	for _, k := range rs.sortedKeys() {
		parts = append(parts, rs.tables[k].String())
	}
	return strings.Join(parts, "")
}
