package controlapi

import (
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/scheduler"
)

// checkModeChange refuses an update that changes a service's mode: its
// tasks are made differently (slots or nodes, to run or to complete), as
// in Swarm, where the mode is fixed at creation.
func checkModeChange(cur, next *api.ServiceSpec) error {
	if from, to := api.ModeName(cur), api.ModeName(next); from != to {
		return status.Errorf(codes.InvalidArgument, "mode: service %s is %s and cannot become %s; create a new service instead", cur.GetName(), from, to)
	}
	return nil
}

// jobCounts fills in what `service ls` shows of a job: how many tasks of
// its current spec completed, how many must, and how many should run now.
// A slot (a node, for a global job) counts once, whatever its history.
func jobCounts(c *api.ServiceCounts, svc *api.Service, tasks []*api.Task) {
	spec := svc.GetSpec()
	done := map[string]bool{}
	places := map[string]bool{}
	for _, t := range tasks {
		if t.GetSpecVersion() != svc.GetSpecVersion() {
			continue
		}
		place := t.GetNodeId()
		if !api.IsGlobal(spec) {
			place = strconv.FormatUint(t.GetSlot(), 10)
		}
		places[place] = true
		if t.GetStatus().GetState() == api.TaskState_TASK_STATE_COMPLETE {
			done[place] = true
		}
	}
	c.Completed = uint64(len(done))
	if j := spec.GetReplicatedJob(); j != nil {
		c.Completions = j.GetTotalCompletions()
		c.Desired = min(j.GetMaxConcurrent(), c.Completions-min(c.Completed, c.Completions))
		return
	}
	c.Completions = uint64(len(places))
	c.Desired = c.Completions - c.Completed
}

// reservedOn sums what the tasks that occupy a node reserve, as the
// scheduler counts it.
func reservedOn(tasks []*api.Task) *api.Resources {
	r := &api.Resources{}
	for _, t := range tasks {
		if !scheduler.Occupies(t) {
			continue
		}
		res := t.GetSpec().GetResources().GetReservations()
		r.NanoCpus += res.GetNanoCpus()
		r.MemoryBytes += res.GetMemoryBytes()
	}
	return r
}
