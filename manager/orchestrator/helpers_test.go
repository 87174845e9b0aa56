package orchestrator

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// now is the fixed clock of the table tests.
var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	running   = api.TaskState_TASK_STATE_RUNNING
	newState  = api.TaskState_TASK_STATE_NEW
	pending   = api.TaskState_TASK_STATE_PENDING
	assigned  = api.TaskState_TASK_STATE_ASSIGNED
	complete  = api.TaskState_TASK_STATE_COMPLETE
	failed    = api.TaskState_TASK_STATE_FAILED
	shutdown  = api.TaskState_TASK_STATE_SHUTDOWN
	rejected  = api.TaskState_TASK_STATE_REJECTED
	removeSt  = api.TaskState_TASK_STATE_REMOVE
	nodeReady = "ready"
	nodeDown  = "down"
)

func testNodes() map[string]*api.Node {
	return map[string]*api.Node{
		nodeReady: {Id: nodeReady, Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}},
		nodeDown:  {Id: nodeDown, Status: &api.NodeStatus{State: api.NodeState_NODE_STATE_DOWN}},
	}
}

type svcOpt func(*api.Service)

func newService(replicas uint64, opts ...svcOpt) *api.Service {
	s := &api.Service{
		Id:          "svc",
		SpecVersion: 1,
		Spec: &api.ServiceSpec{
			Name: "web",
			Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx:1.27"}},
			Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}},
		},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func withRestart(p *api.RestartPolicy) svcOpt {
	return func(s *api.Service) { s.Spec.Task.Restart = p }
}

func withSpecVersion(v uint64) svcOpt {
	return func(s *api.Service) { s.SpecVersion = v }
}

func withHistoryLimit(n uint32) svcOpt {
	return func(s *api.Service) { s.Spec.TaskHistoryLimit = n }
}

var taskSeq atomic.Int64

type taskOpt func(*api.Task)

// newTask makes a task of service "svc" at spec version 1, desired
// RUNNING, on node "ready" once assigned; it last reported a second ago
// and, if it got to RUNNING, started a minute ago (a healthy run).
func newTask(slot uint64, state api.TaskState, opts ...taskOpt) *api.Task {
	n := taskSeq.Add(1)
	t := &api.Task{
		Id:          fmt.Sprintf("t%04d", n),
		Meta:        &api.Meta{CreatedAt: timestamppb.New(now.Add(-time.Hour + time.Duration(n)*time.Second))},
		ServiceId:   "svc",
		ServiceName: "web",
		Slot:        slot,
		SpecVersion: 1,
		Status: &api.TaskStatus{
			Timestamp: timestamppb.New(now.Add(-time.Second)),
			State:     state,
		},
		DesiredState: running,
	}
	if state >= assigned {
		t.NodeId = nodeReady
	}
	if state >= running && state != rejected {
		t.Status.StartedAt = timestamppb.New(now.Add(-time.Minute))
	}
	for _, o := range opts {
		o(t)
	}
	return t
}

func desired(s api.TaskState) taskOpt { return func(t *api.Task) { t.DesiredState = s } }
func onNode(id string) taskOpt        { return func(t *api.Task) { t.NodeId = id } }
func restarts(n uint64) taskOpt       { return func(t *api.Task) { t.RestartCount = n } }
func backoff(step uint32) taskOpt     { return func(t *api.Task) { t.BackoffStep = step } }
func specVersion(v uint64) taskOpt    { return func(t *api.Task) { t.SpecVersion = v } }
func withID(id string) taskOpt        { return func(t *api.Task) { t.Id = id } }
func notBefore(at time.Time) taskOpt  { return func(t *api.Task) { t.NotBefore = timestamppb.New(at) } }
func neverStarted() taskOpt           { return func(t *api.Task) { t.Status.StartedAt = nil } }
func ranFor(d time.Duration) taskOpt {
	return func(t *api.Task) {
		t.Status.StartedAt = timestamppb.New(t.Status.Timestamp.AsTime().Add(-d))
	}
}

// describe renders a plan as sorted lines so table tests compare intent,
// not random ids.
func describe(p Plan) []string {
	var out []string
	for _, t := range p.Create {
		delay := time.Duration(0)
		if t.NotBefore != nil {
			delay = t.NotBefore.AsTime().Sub(t.Status.Timestamp.AsTime())
		}
		made := fmt.Sprintf("create slot=%d", t.Slot)
		if t.NodeId != "" {
			made += " node=" + t.NodeId // a global task is made for its node
		}
		out = append(out, fmt.Sprintf("%s restarts=%d step=%d delay=%s", made, t.RestartCount, t.BackoffStep, delay))
	}
	for _, t := range p.Update {
		out = append(out, fmt.Sprintf("update %s desired=%s", t.Id, api.StateName(t.DesiredState)))
	}
	for _, t := range p.Remove {
		out = append(out, "remove "+t.Id)
	}
	slices.Sort(out)
	return out
}

// apply does to a task list what the store would do with p.
func apply(tasks []*api.Task, p Plan, at time.Time) []*api.Task {
	updated := make(map[string]*api.Task, len(p.Update))
	for _, t := range p.Update {
		updated[t.Id] = t
	}
	removed := make(map[string]bool, len(p.Remove))
	for _, t := range p.Remove {
		removed[t.Id] = true
	}
	var out []*api.Task
	for _, t := range tasks {
		switch {
		case removed[t.Id]:
		case updated[t.Id] != nil:
			out = append(out, updated[t.Id])
		default:
			out = append(out, t)
		}
	}
	for _, t := range p.Create {
		c := proto.Clone(t).(*api.Task)
		c.Meta = &api.Meta{CreatedAt: timestamppb.New(at)}
		out = append(out, c)
	}
	return out
}

func cloneTasks(tasks []*api.Task) []*api.Task {
	out := make([]*api.Task, len(tasks))
	for i, t := range tasks {
		out[i] = proto.Clone(t).(*api.Task)
	}
	return out
}

// runnableBySlot returns each slot's tasks that are desired RUNNING.
func runnableBySlot(tasks []*api.Task) map[uint64][]*api.Task {
	out := make(map[uint64][]*api.Task)
	for _, t := range tasks {
		if t.DesiredState <= running {
			out[t.Slot] = append(out[t.Slot], t)
		}
	}
	return out
}

func timestampAt(at time.Time) *timestamppb.Timestamp { return timestamppb.New(at) }
