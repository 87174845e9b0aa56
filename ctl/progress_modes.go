package ctl

import (
	"cmp"
	"slices"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// assessByNode is assess for a global service or global job: its tasks
// are told apart by node, not slot. Nothing says how many nodes are
// eligible but the orchestrator, which makes every eligible node's task
// at once; so, as Docker does, the service has converged once it has
// tasks and every node that has one runs it (for a job: completed it).
// A global service without an eligible node never converges: wait with
// --timeout, or --detach.
func assessByNode(svc *api.Service, tasks []*api.Task, since, minSpec uint64) convergence {
	c := convergence{service: svc, job: api.IsJob(svc.GetSpec())}
	byNode := map[string]*api.Task{}
	for _, t := range tasks {
		if !upToDate(svc, t) || t.GetNodeId() == "" {
			continue
		}
		if stuck(t) && t.GetMeta().GetVersion() > since && (c.failed == nil || t.GetNodeId() < c.failed.GetNodeId()) {
			c.failed = t
		}
		if c.wanted(t) && newer(t, byNode[t.GetNodeId()]) {
			byNode[t.GetNodeId()] = t
		}
	}
	for _, t := range byNode {
		c.slots = append(c.slots, t)
	}
	slices.SortFunc(c.slots, func(a, b *api.Task) int { return cmp.Compare(a.GetNodeId(), b.GetNodeId()) })
	for _, t := range c.slots {
		c.names = append(c.names, api.ShortID(t.GetNodeId()))
		if c.reached(t) {
			c.running++
		}
	}
	c.replicas = uint64(len(c.slots))
	c.converged = c.failed == nil && c.replicas > 0 &&
		svc.GetSpecVersion() >= minSpec && c.running == c.replicas
	return c
}
