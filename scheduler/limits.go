package scheduler

import (
	"slices"
	"strconv"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// limits are what makes a task's placement depend on more than task
// counts: what it reserves, a cap on its service's tasks per node, and
// spread preferences. Tasks with equal limits (and service and
// constraints) are placed as one group; a group without limits takes the
// plain spread of spreadScan and spreadHeap.
type limits struct {
	res        reservation
	maxPerNode uint64
	// spread holds the preferences' labels, each prefixed with its length
	// so that distinct lists stay distinct.
	spread string
}

func taskLimits(t *api.Task) limits {
	p := t.GetSpec().GetPlacement()
	l := limits{res: reservationOf(t), maxPerNode: p.GetMaxReplicasPerNode()}
	if prefs := p.GetPreferences(); len(prefs) > 0 {
		var b strings.Builder
		for _, pref := range prefs {
			label := api.SpreadLabel(pref)
			b.WriteString(strconv.Itoa(len(label)))
			b.WriteByte(':')
			b.WriteString(label)
		}
		l.spread = b.String()
	}
	return l
}

// spreadLabels are the node labels a task's preferences spread over, in
// order. A preference that names no label (refused by validation) is
// skipped.
func spreadLabels(t *api.Task) []string {
	var out []string
	for _, pref := range t.GetSpec().GetPlacement().GetPreferences() {
		if l := api.SpreadLabel(pref); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// limitFilters are the filters that depend on what is already placed on
// a node: the task's reservations (only those it makes) and its
// service's cap per node. They are checked as tasks are placed, after the
// pipeline's filters, which do not change while a group is placed.
func (s *Scheduler) limitFilters(l limits, service string) pipeline {
	var p pipeline
	if l.res.cpu > 0 {
		p = append(p, CPUFilter(l.res.cpu, func(n *api.Node) int64 {
			return n.GetDescription().GetNanoCpus() - s.reservedOn(n).cpu
		}))
	}
	if l.res.memory > 0 {
		p = append(p, MemoryFilter(l.res.memory, func(n *api.Node) int64 {
			return n.GetDescription().GetMemoryBytes() - s.reservedOn(n).memory
		}))
	}
	if l.maxPerNode > 0 {
		p = append(p, MaxPerNodeFilter{Max: l.maxPerNode, Running: func(n *api.Node) int32 {
			if info := s.nodes[n.GetId()]; info != nil {
				return s.services[service][info]
			}
			return 0
		}})
	}
	return p
}

func (s *Scheduler) reservedOn(n *api.Node) reservation {
	if info := s.nodes[n.GetId()]; info != nil {
		return info.reserved
	}
	return reservation{}
}

// checkPinned decides a task made for one node (a global service's): it
// goes there if the node passes every filter, and otherwise stays pending
// with the reason.
func (s *Scheduler) checkPinned(d *Decision, filtered map[constraintsKey]*candidates) {
	t := d.Task
	cs := t.GetSpec().GetPlacement().GetConstraints()
	k := s.keyOf(t)
	c, ok := filtered[k]
	if !ok {
		c = s.filter(cs, k.wireguard, t)
		filtered[k] = c
	}
	info := s.nodes[t.GetNodeId()]
	switch {
	case c.pipeline == nil:
		d.Explanation = c.explanation
	case info == nil || info.node == nil:
		d.Explanation = "no suitable node (its node " + t.GetNodeId() + " is not part of the cluster)"
	}
	if d.Explanation != "" {
		delete(s.tasks, t.GetId())
		return
	}
	l := taskLimits(t)
	full := slices.Concat(c.pipeline, s.limitFilters(l, t.GetServiceId()))
	if f := full.first(t, info.node); f >= 0 {
		counts := make([]int, len(full))
		counts[f] = 1
		d.Explanation = full.explain(counts)
		delete(s.tasks, t.GetId())
		return
	}
	s.track(t.GetId(), info.id, t.GetServiceId(), l.res)
	d.NodeID = info.id
}

// placeLimited places a group with limits. The candidates are the leaves
// of a tree of the spread preferences (swarmkit's): each task goes down
// the branch with the fewest tasks of the service at every level (label
// values in order on ties), then to the best node of that leaf by the
// plain spread rule (slot.before). A node that cannot take the task is
// dropped from its leaf for the rest of the group: the group's tasks are
// alike, and placing more only uses more. Placements are counted at once,
// since the limits read the counts.
func (s *Scheduler) placeLimited(g group, l limits, c *candidates, members []int32, decisions []Decision, shapes map[shapeKey]*spreadShape) {
	sample := decisions[members[0]].Task
	service := g.key.service
	labels := spreadLabels(sample)
	sk := shapeKey{constraints: g.key.constraints, spread: l.spread}
	shape, ok := shapes[sk]
	if !ok {
		shape = s.newSpreadShape(c.ranks, labels)
		shapes[sk] = shape
	}
	tree := s.plantTree(shape, service)
	for i, m := range members {
		info := tree.take(s, 0, l)
		if info == nil {
			dyn := s.limitFilters(l, service)
			s.unplaced(members[i:], decisions, s.explainLimited(c, dyn, sample))
			break
		}
		s.track(decisions[m].Task.GetId(), info.id, service, l.res)
		decisions[m].NodeID = info.id
	}
	if len(s.services[service]) == 0 {
		delete(s.services, service)
	}
}

// fits reports whether a node with n tasks of the service can take one
// more under limits l: the limit filters' rule, read straight from the
// node's bookkeeping.
func (l limits) fits(info *nodeInfo, n int32) bool {
	d := info.node.GetDescription()
	return (l.res.cpu == 0 || d.GetNanoCpus()-info.reserved.cpu >= l.res.cpu) &&
		(l.res.memory == 0 || d.GetMemoryBytes()-info.reserved.memory >= l.res.memory) &&
		(l.maxPerNode == 0 || uint64(max(n, 0)) < l.maxPerNode)
}

// explainLimited words why no candidate is left for a group with limits:
// the nodes its pipeline turned down, then the candidates by the first
// limit filter each fails now.
func (s *Scheduler) explainLimited(c *candidates, dyn pipeline, sample *api.Task) string {
	full := slices.Concat(c.pipeline, dyn)
	counts := make([]int, len(full))
	copy(counts, c.failed)
	for _, r := range c.ranks {
		if f := dyn.first(sample, s.sorted[r].node); f >= 0 {
			counts[len(c.pipeline)+f]++
		}
	}
	return full.explain(counts)
}

// shapeKey identifies a preference tree's shape: the candidates (by
// constraints) and the labels.
type shapeKey struct {
	constraints constraintsKey
	spread      string
}

// spreadShape is the preference tree over a set of candidates: a branch
// per value of each level's label, the candidates in the leaves. It does
// not depend on the service, so the groups of one Schedule call that have
// the same candidates and labels share it; each plants its own counts on
// it (plantTree).
type spreadShape struct {
	// branches[0] is the root; a branch's children follow it by value.
	branches []shapeBranch
	// ranks holds the candidates leaf by leaf, each leaf's ascending.
	ranks []int32
	// at maps a candidate's rank to its index in ranks; -1 elsewhere.
	at []int32
}

type shapeBranch struct {
	children   []int32 // indexes in branches; nil for a leaf
	parent     int32   // -1 for the root
	start, end int32   // a leaf's candidates: ranks[start:end]
}

func (s *Scheduler) newSpreadShape(ranks []int32, labels []string) *spreadShape {
	type building struct {
		values   map[string]int32
		children []string
		ranks    []int32
	}
	b := []*building{{}}
	parents := []int32{-1}
	for _, r := range ranks {
		cur := int32(0)
		for _, label := range labels {
			v := s.sorted[r].node.GetSpec().GetLabels()[label]
			next, ok := b[cur].values[v]
			if !ok {
				next = int32(len(b))
				b = append(b, &building{})
				parents = append(parents, cur)
				if b[cur].values == nil {
					b[cur].values = map[string]int32{}
				}
				b[cur].values[v] = next
				b[cur].children = append(b[cur].children, v)
			}
			cur = next
		}
		b[cur].ranks = append(b[cur].ranks, r)
	}
	shape := &spreadShape{
		branches: make([]shapeBranch, len(b)),
		ranks:    make([]int32, 0, len(ranks)),
		at:       make([]int32, len(s.sorted)),
	}
	for i := range shape.at {
		shape.at[i] = -1
	}
	// Depth first, children by value, so leaves lie in order in ranks.
	var walk func(i int32)
	walk = func(i int32) {
		br := &shape.branches[i]
		br.parent = parents[i]
		if len(b[i].values) == 0 {
			br.start = int32(len(shape.ranks))
			for _, r := range b[i].ranks {
				shape.at[r] = int32(len(shape.ranks))
				shape.ranks = append(shape.ranks, r)
			}
			br.end = int32(len(shape.ranks))
			return
		}
		slices.Sort(b[i].children)
		for _, v := range b[i].children {
			c := b[i].values[v]
			br.children = append(br.children, c)
			walk(c)
		}
	}
	walk(0)
	return shape
}

// spreadTree is a shape with one group's counts: per branch the tasks of
// the service below it and whether any node below can still take the
// group's next task, per leaf a min-heap of slots (heap[start:end] of a
// leaf's span, end shrinking as nodes are dropped).
type spreadTree struct {
	shape *spreadShape
	count []int32
	full  []bool
	end   []int32
	heap  []slot
}

func (s *Scheduler) plantTree(shape *spreadShape, service string) *spreadTree {
	n := len(shape.branches)
	t := &spreadTree{shape: shape, count: make([]int32, n), full: make([]bool, n), end: make([]int32, n)}
	t.heap = slices.Grow(s.slots[:0], len(shape.ranks))[:len(shape.ranks)]
	for i, r := range shape.ranks {
		t.heap[i] = slot{total: s.totals[r], rank: r}
	}
	for info, k := range s.services[service] {
		if info.rank < 0 {
			continue
		}
		if i := shape.at[info.rank]; i >= 0 {
			t.heap[i].service = k
		}
	}
	for b := range shape.branches {
		br := &shape.branches[b]
		if br.children != nil {
			continue
		}
		t.end[b] = br.end
		leaf := t.heap[br.start:br.end]
		var sum int32
		for i := range leaf {
			sum += leaf[i].service
		}
		for p := int32(b); p >= 0; p = shape.branches[p].parent {
			t.count[p] += sum
		}
		for i := len(leaf)/2 - 1; i >= 0; i-- {
			sink(leaf, i)
		}
	}
	s.slots = t.heap
	return t
}

// take finds the node for the next task below branch b and counts the
// task on the way, or returns nil (and marks b full) when no node below
// can take it.
func (t *spreadTree) take(s *Scheduler, b int32, l limits) *nodeInfo {
	if t.full[b] {
		return nil
	}
	br := &t.shape.branches[b]
	if br.children == nil {
		for t.end[b] > br.start {
			leaf := t.heap[br.start:t.end[b]]
			top := &leaf[0]
			if info := s.sorted[top.rank]; l.fits(info, top.service) {
				top.service++
				top.total++
				sink(leaf, 0)
				t.count[b]++
				return info
			}
			leaf[0] = leaf[len(leaf)-1]
			t.end[b]--
			sink(leaf[:len(leaf)-1], 0)
		}
		t.full[b] = true
		return nil
	}
	for {
		best := int32(-1)
		for _, c := range br.children {
			if !t.full[c] && (best < 0 || t.count[c] < t.count[best]) {
				best = c
			}
		}
		if best < 0 {
			t.full[b] = true
			return nil
		}
		if info := t.take(s, best, l); info != nil {
			t.count[b]++
			return info
		}
	}
}
