package scheduler

import (
	"slices"
	"strconv"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Decision is the scheduler's answer for one pending task.
type Decision struct {
	Task *api.Task
	// NodeID is the chosen node, or "" when no node can take the task.
	NodeID string
	// Explanation says why the task was not placed, with the number of
	// nodes turned down for each reason; empty when NodeID is set.
	Explanation string
}

// nodeInfo is the scheduler's bookkeeping for one node ID. It can exist
// without a node object: tasks may name a node the scheduler has not been
// told about yet, or one that was removed while its tasks wind down, and
// their counts must be right if the node comes (back).
type nodeInfo struct {
	id       string
	node     *api.Node // nil when the node is not known
	total    int32     // tasks occupying the node
	rank     int32     // index in Scheduler.sorted; -1 when not a candidate
	reserved reservation
}

// reservation is what a task sets aside on its node, or the sum of what a
// node's tasks do.
type reservation struct {
	cpu, memory int64
}

func reservationOf(t *api.Task) reservation {
	r := t.GetSpec().GetResources().GetReservations()
	return reservation{cpu: r.GetNanoCpus(), memory: r.GetMemoryBytes()}
}

// placement is where a counted task sits.
type placement struct {
	node    *nodeInfo
	service string
}

// Scheduler places pending tasks on nodes. It keeps per-node task counts
// between calls so that a stream of placements stays cheap: Sync sets the
// whole view, the Upsert/Remove/Task methods keep it current, and Schedule
// counts its own decisions as if they were already committed.
//
// A Scheduler is not safe for concurrent use; the manager's scheduling loop
// owns it.
type Scheduler struct {
	nodes    map[string]*nodeInfo
	services map[string]map[*nodeInfo]int32 // service ID → node → tasks
	tasks    map[string]placement           // counted tasks by ID
	// reserving holds what counted tasks reserve, for those that do: kept
	// apart so that placement stays small for the many that do not.
	reserving map[string]reservation
	// encrypted holds the ids of the encrypted networks (SyncNetworks):
	// their tasks need a node with WireGuard.
	encrypted map[string]bool

	// sorted holds the known nodes ordered by ID: the spread tie-break, and
	// a stable order for explanations. Rebuilt only when the node set
	// changes, not on every Schedule.
	sorted []*nodeInfo
	stale  bool
	// totals mirrors nodeInfo.total by rank: the placement loops read it
	// for every candidate, and a dense array is several times faster to
	// walk than the nodeInfo pointers.
	totals []int32

	// Scratch for Schedule, kept to avoid reallocating per group.
	slots []slot
	mark  []uint32 // mark[rank] == stamp: the node is in the current group's busy list
	stamp uint32
}

// New returns an empty Scheduler; call Sync before the first Schedule.
func New() *Scheduler {
	s := &Scheduler{}
	s.Sync(nil, nil)
	return s
}

// Sync replaces the scheduler's view with nodes and the tasks that occupy
// them. Tasks that do not occupy a node (see TaskAssigned) are ignored, so
// the caller may pass every task it has.
func (s *Scheduler) Sync(nodes []*api.Node, tasks []*api.Task) {
	s.nodes = make(map[string]*nodeInfo, len(nodes))
	s.services = make(map[string]map[*nodeInfo]int32)
	s.tasks = make(map[string]placement, len(tasks))
	s.reserving = make(map[string]reservation)
	for _, n := range nodes {
		if n.GetId() == "" {
			continue
		}
		s.nodes[n.GetId()] = &nodeInfo{id: n.GetId(), node: n, rank: -1}
	}
	for _, t := range tasks {
		if t.GetId() != "" && Occupies(t) {
			s.track(t.GetId(), t.GetNodeId(), t.GetServiceId(), reservationOf(t))
		}
	}
	s.sorted = nil
	s.stale = true
}

// SyncNetworks replaces what the scheduler knows of the networks: which
// are encrypted, so that their tasks go only to nodes with WireGuard.
// Without it every network counts as plain.
func (s *Scheduler) SyncNetworks(networks []*api.Network) {
	s.encrypted = nil
	for _, n := range networks {
		if n.GetSpec().GetEncrypted() {
			if s.encrypted == nil {
				s.encrypted = make(map[string]bool)
			}
			s.encrypted[n.GetId()] = true
		}
	}
}

// needsWireGuard reports whether task t is on an encrypted network.
func (s *Scheduler) needsWireGuard(t *api.Task) bool {
	if len(s.encrypted) == 0 {
		return false
	}
	for _, at := range t.GetNetworks() {
		if s.encrypted[at.GetNetworkId()] {
			return true
		}
	}
	return false
}

// UpsertNode adds node n or replaces the scheduler's copy of it.
func (s *Scheduler) UpsertNode(n *api.Node) {
	id := n.GetId()
	if id == "" {
		return
	}
	info, ok := s.nodes[id]
	if !ok {
		info = &nodeInfo{id: id, rank: -1}
		s.nodes[id] = info
	}
	if info.node == nil {
		s.stale = true
	}
	info.node = n
}

// RemoveNode forgets node id. Counts of tasks still recorded on it are kept
// until TaskGone, so they are right if the node returns.
func (s *Scheduler) RemoveNode(id string) {
	info, ok := s.nodes[id]
	if !ok || info.node == nil {
		return
	}
	info.node = nil
	info.rank = -1
	s.stale = true
	if info.total == 0 {
		delete(s.nodes, id)
	}
}

// TaskAssigned records task t as it is now. A task that no longer occupies
// a node (see Occupies) is forgotten, as by TaskGone.
// Calling it again for a task already counted where it is changes nothing,
// so the store's echo of a committed Decision is harmless.
func (s *Scheduler) TaskAssigned(t *api.Task) {
	id := t.GetId()
	if id == "" {
		return
	}
	if !Occupies(t) {
		s.untrack(id)
		return
	}
	if p, ok := s.tasks[id]; ok {
		if p.node.id == t.GetNodeId() && p.service == t.GetServiceId() {
			return
		}
		s.untrack(id)
	}
	s.track(id, t.GetNodeId(), t.GetServiceId(), reservationOf(t))
}

// TaskGone forgets task t: it ended, was deleted, or a Decision for it was
// not committed.
func (s *Scheduler) TaskGone(t *api.Task) {
	s.untrack(t.GetId())
}

// Occupies reports whether task t counts against its node, its
// reservations included: it was assigned there, is meant to run, and has
// not ended (api.IsTerminal: complete, shutdown, failed, rejected,
// orphaned). A task told to stop no longer counts, even while its
// container winds down: the count placement must spread is the one that
// will remain, and a replacement must not wait for its predecessor's
// reservation (reservations are the scheduler's promise, not a cgroup).
func Occupies(t *api.Task) bool {
	return t.GetNodeId() != "" &&
		t.GetStatus().GetState() >= api.TaskState_TASK_STATE_ASSIGNED &&
		t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING &&
		!api.IsTerminal(t.GetStatus().GetState())
}

// Schedulable reports whether task t waits for the scheduler: PENDING and
// meant to run. Most such tasks have no node yet; a global service's task
// is made with its node (Pinned), which Schedule only checks.
func Schedulable(t *api.Task) bool {
	return t.GetId() != "" &&
		t.GetStatus().GetState() == api.TaskState_TASK_STATE_PENDING &&
		t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING
}

// Pinned reports whether a task waiting for the scheduler was made for one
// node (a global service's task).
func Pinned(t *api.Task) bool {
	return t.GetNodeId() != "" && t.GetStatus().GetState() < api.TaskState_TASK_STATE_ASSIGNED
}

func (s *Scheduler) track(taskID, nodeID, service string, res reservation) {
	info, ok := s.nodes[nodeID]
	if !ok {
		info = &nodeInfo{id: nodeID, rank: -1}
		s.nodes[nodeID] = info
	}
	s.count(info, 1)
	if res != (reservation{}) {
		info.reserved.cpu += res.cpu
		info.reserved.memory += res.memory
		s.reserving[taskID] = res
	}
	m := s.services[service]
	if m == nil {
		m = make(map[*nodeInfo]int32)
		s.services[service] = m
	}
	m[info]++
	s.tasks[taskID] = placement{node: info, service: service}
}

func (s *Scheduler) untrack(taskID string) {
	p, ok := s.tasks[taskID]
	if !ok {
		return
	}
	delete(s.tasks, taskID)
	s.count(p.node, -1)
	if res, ok := s.reserving[taskID]; ok {
		p.node.reserved.cpu -= res.cpu
		p.node.reserved.memory -= res.memory
		delete(s.reserving, taskID)
	}
	if m := s.services[p.service]; m != nil {
		if m[p.node]--; m[p.node] <= 0 {
			delete(m, p.node)
		}
		if len(m) == 0 {
			delete(s.services, p.service)
		}
	}
	if p.node.node == nil && p.node.total <= 0 && s.nodes[p.node.id] == p.node {
		delete(s.nodes, p.node.id)
	}
}

// count changes the number of tasks on a node by delta.
func (s *Scheduler) count(info *nodeInfo, delta int32) {
	info.total += delta
	if info.rank >= 0 && !s.stale {
		s.totals[info.rank] = info.total
	}
}

// refresh rebuilds the sorted candidate list after the node set changed.
func (s *Scheduler) refresh() {
	if !s.stale {
		return
	}
	s.sorted = s.sorted[:0]
	for _, info := range s.nodes {
		if info.node != nil {
			s.sorted = append(s.sorted, info)
		}
	}
	slices.SortFunc(s.sorted, func(a, b *nodeInfo) int { return strings.Compare(a.id, b.id) })
	s.totals = slices.Grow(s.totals[:0], len(s.sorted))[:len(s.sorted)]
	s.mark = make([]uint32, len(s.sorted))
	s.stamp = 0
	for i, info := range s.sorted {
		info.rank = int32(i)
		s.totals[i] = info.total
	}
	s.stale = false
}

// constraintsKey identifies a list of placement constraints and whether
// the task needs WireGuard (an encrypted network). Tasks with equal keys
// pass the same nodes, so filters run once per key and node.
type constraintsKey struct {
	n int
	// s is the single constraint, or for several each one prefixed with
	// its length, which keeps distinct lists distinct.
	s string
	// wireguard: the task is on an encrypted network. Part of the key so
	// that such a task never shares a candidate list with one that is not.
	wireguard bool
}

// keyOf is task t's constraintsKey.
func (s *Scheduler) keyOf(t *api.Task) constraintsKey {
	k := constraintsKeyOf(t.GetSpec().GetPlacement().GetConstraints())
	k.wireguard = s.needsWireGuard(t)
	return k
}

func constraintsKeyOf(cs []string) constraintsKey {
	switch len(cs) {
	case 0:
		return constraintsKey{}
	case 1:
		return constraintsKey{n: 1, s: cs[0]}
	}
	var b strings.Builder
	for _, c := range cs {
		b.WriteString(strconv.Itoa(len(c)))
		b.WriteByte(':')
		b.WriteString(c)
	}
	return constraintsKey{n: len(cs), s: b.String()}
}

// groupKey identifies tasks that are placed together: same service (spread
// is per service), same constraints (same candidate nodes) and same limits.
type groupKey struct {
	service     string
	constraints constraintsKey
	// limits numbers the group's limits among those of one Schedule call,
	// from 1; 0 is none. A number keeps the key, hashed once per task,
	// and the group small.
	limits int32
}

type group struct {
	key         groupKey
	constraints []string
	size        int32
}

// candidates are the nodes that pass a pipeline, or why there are none.
type candidates struct {
	ranks       []int32 // ascending
	explanation string
	// pipeline and failed (per filter, the nodes it turned down) explain
	// a group whose limits leave no candidate either.
	pipeline pipeline
	failed   []int
}

// Schedule places the pending tasks: those in PENDING state with no node and
// desired state RUNNING. Other tasks are skipped and get no Decision, as does
// a second copy of a task. It returns one Decision per pending task, in input
// order, and counts the placements as if committed: call TaskGone for any
// Decision that could not be committed. Tasks are not modified.
//
// Each task goes to the node, among those that pass its filters, with the
// fewest tasks of its service, then the fewest tasks in all, then the lowest
// node ID. Tasks are placed in groups of one service and one set of
// constraints, groups in order of first appearance, so equal inputs always
// give equal decisions.
func (s *Scheduler) Schedule(pending []*api.Task) []Decision {
	s.refresh()

	// Group tasks by service, constraints and limits, in order of first
	// appearance; tasks made for a node (Pinned) are checked on their own.
	var groups []group
	var pinned []int32
	limitsOf := []limits{{}} // by number
	numbered := map[limits]int32{}
	number := func(l limits) int32 {
		if l == (limits{}) {
			return 0
		}
		n, ok := numbered[l]
		if !ok {
			n = int32(len(limitsOf))
			numbered[l] = n
			limitsOf = append(limitsOf, l)
		}
		return n
	}
	index := make(map[groupKey]int32)
	in := make([]int32, 0, len(pending)) // group of each schedulable task
	decisions := make([]Decision, 0, len(pending))
	for _, t := range pending {
		if !Schedulable(t) {
			continue
		}
		id := t.GetId()
		if p, seen := s.tasks[id]; seen {
			if p.node == nil {
				continue // the same task twice: decide it once
			}
			// Scheduled before but not committed: placed afresh.
			s.untrack(id)
		}
		// A placeholder until the task is placed, so a second copy in
		// pending is recognised above without another lookup per task.
		s.tasks[id] = placement{}
		if Pinned(t) {
			pinned = append(pinned, int32(len(decisions)))
			decisions = append(decisions, Decision{Task: t})
			continue
		}
		pl := t.GetSpec().GetPlacement()
		cs := pl.GetConstraints()
		k := groupKey{service: t.GetServiceId(), constraints: s.keyOf(t)}
		// Most tasks have no limits: tell so from what is at hand before
		// reading them all.
		if t.GetSpec().GetResources() != nil || pl.GetMaxReplicasPerNode() != 0 || len(pl.GetPreferences()) != 0 {
			k.limits = number(taskLimits(t))
		}
		g, ok := index[k]
		if !ok {
			g = int32(len(groups))
			index[k] = g
			groups = append(groups, group{key: k, constraints: cs})
		}
		groups[g].size++
		in = append(in, g)
		decisions = append(decisions, Decision{Task: t})
	}

	// Lay the task positions out group by group (a counting sort).
	start := make([]int32, len(groups)+1)
	for i, g := range groups {
		start[i+1] = start[i] + g.size
	}
	next := slices.Clone(start[:len(groups)])
	order := make([]int32, len(in))
	for i, g := range in {
		order[next[g]] = int32(i)
		next[g]++
	}

	filtered := make(map[constraintsKey]*candidates)
	shapes := make(map[shapeKey]*spreadShape)
	// Tasks made for a node go first: they have nowhere else to go.
	for _, m := range pinned {
		s.checkPinned(&decisions[m], filtered)
	}
	for i, g := range groups {
		members := order[start[i]:start[i+1]]
		c, ok := filtered[g.key.constraints]
		if !ok {
			c = s.filter(g.constraints, g.key.constraints.wireguard, decisions[members[0]].Task)
			filtered[g.key.constraints] = c
		}
		if len(c.ranks) == 0 {
			s.unplaced(members, decisions, c.explanation)
			continue
		}
		if g.key.limits != 0 {
			s.placeLimited(g, limitsOf[g.key.limits], c, members, decisions, shapes)
			continue
		}
		s.spread(g.key.service, c.ranks, members, decisions)
	}
	return decisions
}

// unplaced gives the tasks at positions members of decisions the
// explanation why none of them was placed.
func (s *Scheduler) unplaced(members []int32, decisions []Decision, explanation string) {
	for _, m := range members {
		decisions[m].Explanation = explanation
		delete(s.tasks, decisions[m].Task.GetId())
	}
}

// filter runs the pipeline for constraints (and WireGuard, for a task on
// an encrypted network) over every known node.
func (s *Scheduler) filter(constraints []string, wireguard bool, sample *api.Task) *candidates {
	p, err := newPipeline(constraints, wireguard)
	if err != nil {
		return &candidates{explanation: err.Error()}
	}
	failed := make([]int, len(p))
	c := &candidates{pipeline: p, failed: failed}
	for _, info := range s.sorted {
		if f := p.first(sample, info.node); f >= 0 {
			failed[f]++
			continue
		}
		c.ranks = append(c.ranks, info.rank)
	}
	if len(c.ranks) == 0 {
		c.explanation = p.explain(failed)
	}
	return c
}

// smallGroup is the group size up to which spread scans the candidates once
// per task instead of building a heap. A scan reads one int32 per candidate;
// building the heap costs several times that per candidate, so for a handful
// of tasks (a service replacing the replica of a lost node, say) scanning is
// cheaper. Tuned with BenchmarkSchedule1kNodes10kTasks/services=10000.
const smallGroup = 8

// slot is one candidate node's score while a group is placed.
type slot struct {
	service int32 // tasks of the group's service on the node
	total   int32 // tasks on the node
	rank    int32 // the node's position by ID
	placed  int32 // tasks this group put there
}

// before orders slots by preference: the spread rule.
func (a *slot) before(b *slot) bool {
	if a.service != b.service {
		return a.service < b.service
	}
	if a.total != b.total {
		return a.total < b.total
	}
	return a.rank < b.rank
}

// spread places the tasks at positions members of decisions, all of one
// service, on the candidate nodes ranks (ascending).
func (s *Scheduler) spread(service string, ranks []int32, members []int32, decisions []Decision) {
	counts := s.services[service]
	if counts == nil {
		counts = make(map[*nodeInfo]int32)
		s.services[service] = counts
	}
	if len(members) <= smallGroup {
		s.spreadScan(service, counts, ranks, members, decisions)
	} else {
		s.spreadHeap(service, counts, ranks, members, decisions)
	}
	if len(counts) == 0 {
		delete(s.services, service)
	}
}

// spreadScan places a few tasks by scanning the candidates for each. The
// nodes already running the service ("busy") are few and listed apart; any
// candidate not among them has a service count of zero, so the best node is
// the least loaded of those if there is one, else the best busy node.
func (s *Scheduler) spreadScan(service string, counts map[*nodeInfo]int32, ranks []int32, members []int32, decisions []Decision) {
	if s.stamp++; s.stamp == 0 {
		clear(s.mark)
		s.stamp = 1
	}
	busy := s.slots[:0]
	for info, n := range counts {
		if info.rank < 0 {
			continue
		}
		if _, ok := slices.BinarySearch(ranks, info.rank); ok {
			busy = append(busy, slot{service: n, total: info.total, rank: info.rank})
			s.mark[info.rank] = s.stamp
		}
	}
	for _, m := range members {
		best, bestTotal := int32(-1), int32(0)
		if len(busy) < len(ranks) {
			// ranks ascend, so keeping the first of equal totals keeps the lowest ID.
			for _, r := range ranks {
				if s.mark[r] != s.stamp && (best < 0 || s.totals[r] < bestTotal) {
					best, bestTotal = r, s.totals[r]
				}
			}
		}
		if best >= 0 {
			busy = append(busy, slot{service: 1, total: bestTotal + 1, rank: best})
			s.mark[best] = s.stamp
		} else {
			b := 0
			for i := range busy {
				if busy[i].before(&busy[b]) {
					b = i
				}
			}
			busy[b].service++
			busy[b].total++
			best = busy[b].rank
		}
		info := s.sorted[best]
		s.count(info, 1)
		counts[info]++
		s.tasks[decisions[m].Task.GetId()] = placement{node: info, service: service}
		decisions[m].NodeID = info.id
	}
	s.slots = busy
}

// spreadHeap places many tasks with the candidates in a binary min-heap of
// slots, so each placement costs O(log nodes): take the best node, count the
// task on it, let it sink to its new place. Counts are written back once at
// the end.
func (s *Scheduler) spreadHeap(service string, counts map[*nodeInfo]int32, ranks []int32, members []int32, decisions []Decision) {
	h := s.slots[:0]
	for _, r := range ranks {
		h = append(h, slot{total: s.totals[r], rank: r})
	}
	if len(counts) < len(h) {
		// Fewer nodes run the service than are candidates: visit those
		// rather than look up every candidate.
		for info, n := range counts {
			if info.rank < 0 {
				continue
			}
			if i, ok := slices.BinarySearch(ranks, info.rank); ok {
				h[i].service = n
			}
		}
	} else if len(counts) > 0 {
		for i := range h {
			h[i].service = counts[s.sorted[h[i].rank]]
		}
	}
	for i := len(h)/2 - 1; i >= 0; i-- {
		sink(h, i)
	}

	for _, m := range members {
		best := &h[0]
		info := s.sorted[best.rank]
		decisions[m].NodeID = info.id
		s.tasks[decisions[m].Task.GetId()] = placement{node: info, service: service}
		best.service++
		best.total++
		best.placed++
		sink(h, 0)
	}

	for i := range h {
		if h[i].placed > 0 {
			info := s.sorted[h[i].rank]
			s.count(info, h[i].placed)
			counts[info] += h[i].placed
		}
	}
	s.slots = h
}

// sink moves h[i] down the min-heap h until its children are not before it.
func sink(h []slot, i int) {
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		c := l
		if r := l + 1; r < len(h) && h[r].before(&h[l]) {
			c = r
		}
		if !h[c].before(&h[i]) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
