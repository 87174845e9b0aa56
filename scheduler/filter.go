package scheduler

import (
	"fmt"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Filter decides whether a node can take a task, and words the reason when
// it cannot, so a pending task says which nodes were turned down and why.
type Filter interface {
	// Check reports whether node n can run task t.
	Check(t *api.Task, n *api.Node) bool
	// Explain says why nodes failed Check, for a count of nodes > 0
	// ("2 nodes are not ready").
	Explain(nodes int) string
}

// nodes words a node count with its verb agreeing: nodes(1, "is", "are").
func nodes(n int, one, many string) string {
	if n == 1 {
		return "1 node " + one
	}
	return fmt.Sprintf("%d nodes %s", n, many)
}

// ReadyFilter passes nodes the dispatcher sees as READY: a node that is down,
// disconnected or not yet heard from would not receive its assignment.
type ReadyFilter struct{}

// Check implements Filter.
func (ReadyFilter) Check(_ *api.Task, n *api.Node) bool {
	return n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY
}

// Explain implements Filter.
func (ReadyFilter) Explain(n int) string { return nodes(n, "is not ready", "are not ready") }

// AvailabilityFilter passes nodes the operator left active. PAUSE and DRAIN
// both refuse new tasks; they differ only in what happens to running ones,
// which is the orchestrator's business. An unset availability counts as
// active, the default for a node nobody has updated.
type AvailabilityFilter struct{}

// Check implements Filter.
func (AvailabilityFilter) Check(_ *api.Task, n *api.Node) bool {
	switch n.GetSpec().GetAvailability() {
	case api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED:
		return true
	}
	return false
}

// Explain implements Filter.
func (AvailabilityFilter) Explain(n int) string {
	return nodes(n, "is not available for new tasks (paused or drained)", "are not available for new tasks (paused or drained)")
}

// WireGuardFilter passes nodes that report a WireGuard public key: a task
// on an encrypted network needs one, since its node sends the network's
// VXLAN through WireGuard and a node without it could not reach the
// network's other tasks.
type WireGuardFilter struct{}

// Check implements Filter.
func (WireGuardFilter) Check(_ *api.Task, n *api.Node) bool {
	return len(n.GetDescription().GetWireguardKey()) != 0
}

// Explain implements Filter.
func (WireGuardFilter) Explain(n int) string {
	return nodes(n, "lacks WireGuard", "lack WireGuard") + " (the task is on an encrypted network)"
}

// ConstraintFilter passes nodes that satisfy one placement constraint. A
// task's pipeline holds one per constraint so the explanation can name the
// constraint that turned each node down.
type ConstraintFilter struct {
	Constraint Constraint
}

// Check implements Filter. The constraint was parsed from t's spec when the
// pipeline was built, so t itself is not read again.
func (f ConstraintFilter) Check(_ *api.Task, n *api.Node) bool { return f.Constraint.Matches(n) }

// Explain implements Filter.
func (f ConstraintFilter) Explain(n int) string {
	c := f.Constraint.String()
	return nodes(n, "does not satisfy constraint "+c, "do not satisfy constraint "+c)
}

// PlatformFilter passes nodes whose OS and architecture can run the task's
// image. Tasks do not yet carry their image's platform, so an empty field
// means unknown and passes every node; the filter exists so the pipeline and
// its explanation already have a place for it.
type PlatformFilter struct {
	OS, Arch string
}

// Check implements Filter.
func (f PlatformFilter) Check(_ *api.Task, n *api.Node) bool {
	d := n.GetDescription()
	if f.OS != "" && !strings.EqualFold(f.OS, d.GetOs()) {
		return false
	}
	if f.Arch != "" && !strings.EqualFold(normalizeArch(f.Arch), normalizeArch(d.GetArch())) {
		return false
	}
	return true
}

// Explain implements Filter.
func (f PlatformFilter) Explain(n int) string {
	p := f.OS
	if f.Arch != "" {
		p += "/" + f.Arch
	}
	return nodes(n, "does not match the image platform "+p, "do not match the image platform "+p)
}

// ResourceFilter passes nodes where one resource not yet reserved by
// their tasks covers the task's reservation of it: CPUFilter and
// MemoryFilter make one.
type ResourceFilter struct {
	// Resource names it in explanations: "CPU", "memory".
	Resource string
	// Reserve is what the task reserves; Amount words it ("0.5 CPUs").
	Reserve int64
	Amount  func(int64) string
	// Free is a node's capacity less what its tasks reserve.
	Free func(n *api.Node) int64
}

// CPUFilter is the ResourceFilter for a reservation of nano CPUs.
func CPUFilter(reserve int64, free func(*api.Node) int64) ResourceFilter {
	return ResourceFilter{Resource: "CPU", Reserve: reserve, Free: free,
		Amount: func(n int64) string { return api.FormatNanoCPUs(n) + " CPUs" }}
}

// MemoryFilter is the ResourceFilter for a reservation of memory bytes.
func MemoryFilter(reserve int64, free func(*api.Node) int64) ResourceFilter {
	return ResourceFilter{Resource: "memory", Reserve: reserve, Free: free, Amount: api.FormatBytes}
}

// Check implements Filter.
func (f ResourceFilter) Check(_ *api.Task, n *api.Node) bool { return f.Free(n) >= f.Reserve }

// Explain implements Filter.
func (f ResourceFilter) Explain(n int) string {
	return nodes(n, "lacks "+f.Resource, "lack "+f.Resource) + " (the task reserves " + f.Amount(f.Reserve) + ")"
}

// MaxPerNodeFilter passes nodes that run fewer than Max tasks of the
// task's service (the spec's max_replicas_per_node).
type MaxPerNodeFilter struct {
	Max uint64
	// Running is how many tasks of the service a node has.
	Running func(n *api.Node) int32
}

// Check implements Filter.
func (f MaxPerNodeFilter) Check(_ *api.Task, n *api.Node) bool {
	return uint64(max(f.Running(n), 0)) < f.Max
}

// Explain implements Filter.
func (f MaxPerNodeFilter) Explain(n int) string {
	return nodes(n, "already runs", "already run") + fmt.Sprintf(" the service's maximum of %d per node", f.Max)
}

// pipeline is the ordered list of filters a task must pass. Cheap,
// task-independent filters come first, and a node is charged to the first
// filter it fails only: a down node is reported as not ready, not also as
// failing its constraints.
type pipeline []Filter

// newPipeline builds the pipeline for tasks with the given placement
// constraints; wireguard adds WireGuardFilter, for tasks on an encrypted
// network.
func newPipeline(constraints []string, wireguard bool) (pipeline, error) {
	cs, err := ParseConstraints(constraints)
	if err != nil {
		return nil, fmt.Errorf("invalid placement: %w", err)
	}
	p := make(pipeline, 0, 3+len(cs))
	p = append(p, ReadyFilter{}, AvailabilityFilter{})
	if wireguard {
		p = append(p, WireGuardFilter{})
	}
	for _, c := range cs {
		p = append(p, ConstraintFilter{Constraint: c})
	}
	// PlatformFilter joins once tasks carry their image's platform.
	return p, nil
}

// first returns the index of the first filter n fails, or -1 when n passes.
func (p pipeline) first(t *api.Task, n *api.Node) int {
	for i, f := range p {
		if !f.Check(t, n) {
			return i
		}
	}
	return -1
}

// explain words the failures counted per filter (counts[i] nodes failed
// p[i]) as the reason a task stays pending.
func (p pipeline) explain(counts []int) string {
	var parts []string
	for i, n := range counts {
		if n > 0 {
			parts = append(parts, p[i].Explain(n))
		}
	}
	if len(parts) == 0 {
		return "no suitable node (the cluster has no nodes)"
	}
	return "no suitable node (" + strings.Join(parts, "; ") + ")"
}
