package manager

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/store"
)

const selfID = "n1"

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig(dir string) Config {
	return Config{
		DataDir: dir,
		NodeID:  selfID,
		Logger:  quietLogger(),
		// No worker heartbeats in these tests: the node's state is set
		// by the test and must not expire while it runs.
		Dispatcher: dispatcher.Config{HeartbeatPeriod: time.Hour, Logger: quietLogger()},
	}
}

// startManager initialises a cluster in a temp dir, with the default
// ingress network, and runs its controllers until the test ends.
func startManager(t *testing.T) *Manager {
	t.Helper()
	return startManagerWith(t, testConfig(t.TempDir()), Ingress{})
}

// startManagerWith is startManager with cfg and the ingress network asked
// for.
func startManagerWith(t *testing.T, cfg Config, ingress Ingress) *Manager {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	self := &api.Node{Id: selfID, Role: api.NodeRole_NODE_ROLE_MANAGER, Description: &api.NodeDescription{Hostname: "host-1", Os: "linux", Arch: "amd64"}}
	m, err := Init(ctx, cfg, nil, self, ingress)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := m.Run(runCtx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	t.Cleanup(func() {
		stop()
		wg.Wait()
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

// setNode changes the self node through raft, as the dispatcher or an
// operator would.
func setNode(t *testing.T, m *Manager, fn func(n *api.Node)) {
	t.Helper()
	// The leader's controllers write the node too (its ingress address):
	// read, change and write again when they got there first.
	for {
		var n *api.Node
		m.State().Store().View(func(tx store.ReadTx) { n = proto.Clone(tx.Node(selfID)).(*api.Node) })
		fn(n)
		err := m.State().Propose(context.Background(), store.Update(n))
		if errors.Is(err, store.ErrSequenceConflict) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		return
	}
}

func ready(n *api.Node) {
	n.Status = &api.NodeStatus{State: api.NodeState_NODE_STATE_READY}
}

func spec(name string, replicas uint64) *api.ServiceSpec {
	return &api.ServiceSpec{
		Name: name,
		Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "example/echo:1"}},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: replicas}},
	}
}

func createService(t *testing.T, m *Manager, s *api.ServiceSpec) *api.Service {
	t.Helper()
	resp, err := m.control.CreateService(context.Background(), &api.CreateServiceRequest{Spec: s})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetService()
}

func tasksOf(m *Manager, serviceID string) []*api.Task {
	var tasks []*api.Task
	m.State().Store().View(func(tx store.ReadTx) { tasks = tx.TasksOfService(serviceID) })
	return tasks
}

// history records every stored version of every task, from
// the store's change feed, so tests can check the path each task took.
type history struct {
	mu   sync.Mutex
	seen map[string][]*api.Task // by task id, in log order
	stop func()
}

func recordHistory(t *testing.T, m *Manager) *history {
	h := &history{seen: map[string][]*api.Task{}}
	sub := m.State().Store().Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.Ready():
			}
			for _, c := range sub.Next() {
				for _, ev := range c.Events {
					tk, ok := ev.Object.(*api.Task)
					if !ok || ev.Kind == api.StoreActionKind_STORE_ACTION_KIND_REMOVE {
						continue
					}
					h.mu.Lock()
					h.seen[tk.GetId()] = append(h.seen[tk.GetId()], tk)
					h.mu.Unlock()
				}
			}
		}
	}()
	h.stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(h.stop)
	return h
}

// of returns the recorded versions of a task.
func (h *history) of(id string) []*api.Task {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.seen[id])
}

// states returns the distinct states a task went through, in order.
func states(versions []*api.Task) []api.TaskState {
	var out []api.TaskState
	for _, v := range versions {
		st := v.GetStatus().GetState()
		if len(out) == 0 || out[len(out)-1] != st {
			out = append(out, st)
		}
	}
	return out
}

func TestServiceTasksReachAssigned(t *testing.T) {
	m := startManager(t)
	setNode(t, m, ready)
	h := recordHistory(t, m)
	svc := createService(t, m, spec("web", 3))

	await.For(t, "3 tasks assigned", func() (bool, string) {
		tasks := tasksOf(m, svc.GetId())
		n := 0
		for _, tk := range tasks {
			if tk.GetStatus().GetState() == api.TaskState_TASK_STATE_ASSIGNED {
				n++
			}
		}
		return n == 3 && len(tasks) == 3, fmt.Sprintf("%d tasks, %d assigned", len(tasks), n)
	})
	h.stop()
	var slots []uint64
	for _, tk := range tasksOf(m, svc.GetId()) {
		slots = append(slots, tk.GetSlot())
		if tk.GetNodeId() != selfID || tk.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
			t.Errorf("task %s: node %q desired %v, want node %s desired RUNNING", tk.GetId(), tk.GetNodeId(), tk.GetDesiredState(), selfID)
		}
		if tk.GetSpecVersion() != svc.GetSpecVersion() || !proto.Equal(tk.GetSpec(), svc.GetSpec().GetTask()) {
			t.Errorf("task %s does not carry the service's task spec", tk.GetId())
		}
		want := []api.TaskState{api.TaskState_TASK_STATE_NEW, api.TaskState_TASK_STATE_PENDING, api.TaskState_TASK_STATE_ASSIGNED}
		if got := states(h.of(tk.GetId())); !slices.Equal(got, want) {
			t.Errorf("task %s went through %v, want %v", tk.GetId(), got, want)
		}
	}
	slices.Sort(slots)
	if !slices.Equal(slots, []uint64{1, 2, 3}) {
		t.Errorf("slots = %v, want 1, 2, 3", slots)
	}
}

// TestRestartDelay checks that a task held back by not_before stays NEW
// until then: its first move (to PENDING) is stamped at or after
// not_before.
func TestRestartDelay(t *testing.T) {
	const delay = 1500 * time.Millisecond
	tests := []struct {
		name string
		// delayed makes a task with not_before in the future and returns
		// its id.
		delayed func(t *testing.T, m *Manager) string
	}{
		{
			name: "replacement of a failed task",
			delayed: func(t *testing.T, m *Manager) string {
				s := spec("web", 1)
				s.Task.Restart = &api.RestartPolicy{Delay: durationpb.New(delay)}
				svc := createService(t, m, s)
				var first *api.Task
				await.For(t, "first task assigned", func() (bool, string) {
					tasks := tasksOf(m, svc.GetId())
					if len(tasks) == 1 && tasks[0].GetStatus().GetState() == api.TaskState_TASK_STATE_ASSIGNED {
						first = tasks[0]
						return true, ""
					}
					return false, fmt.Sprint(tasks)
				})
				failedAt := time.Now()
				failed := proto.Clone(first).(*api.Task)
				failed.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED, Err: "task: non-zero exit (1)", Timestamp: timestamppb.New(failedAt)}
				if err := m.State().Propose(context.Background(), store.Update(failed)); err != nil {
					t.Fatal(err)
				}
				var next *api.Task
				await.For(t, "replacement task", func() (bool, string) {
					for _, tk := range tasksOf(m, svc.GetId()) {
						if tk.GetId() != first.GetId() {
							next = tk
							return true, ""
						}
					}
					return false, "none yet"
				})
				if next.GetSlot() != first.GetSlot() || next.GetRestartCount() != 1 {
					t.Errorf("replacement slot %d restart_count %d, want slot %d count 1", next.GetSlot(), next.GetRestartCount(), first.GetSlot())
				}
				if nb := next.GetNotBefore(); nb == nil || nb.AsTime().Before(failedAt.Add(delay)) {
					t.Errorf("replacement not_before = %v, want at least %v after the failure (%v)", nb, delay, failedAt)
				}
				return next.GetId()
			},
		},
		{
			name: "task stored with not_before",
			delayed: func(t *testing.T, m *Manager) string {
				now := time.Now()
				svc := &api.Service{Id: api.NewID(), Meta: &api.Meta{CreatedAt: timestamppb.New(now)}, Spec: spec("api", 1), SpecVersion: 1}
				api.ApplyServiceDefaults(svc.Spec)
				tk := &api.Task{
					Id: api.NewID(), Meta: &api.Meta{CreatedAt: timestamppb.New(now)},
					ServiceId: svc.GetId(), ServiceName: "api", Slot: 1, SpecVersion: 1,
					Spec:         proto.Clone(svc.GetSpec().GetTask()).(*api.TaskSpec),
					Status:       &api.TaskStatus{State: api.TaskState_TASK_STATE_NEW, Timestamp: timestamppb.New(now)},
					DesiredState: api.TaskState_TASK_STATE_RUNNING,
					NotBefore:    timestamppb.New(now.Add(delay)),
				}
				if err := m.State().Propose(context.Background(), store.Create(svc), store.Create(tk)); err != nil {
					t.Fatal(err)
				}
				return tk.GetId()
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := startManager(t)
			setNode(t, m, ready)
			h := recordHistory(t, m)
			id := tc.delayed(t, m)
			await.For(t, "delayed task assigned", func() (bool, string) {
				st := states(h.of(id))
				return slices.Contains(st, api.TaskState_TASK_STATE_ASSIGNED), fmt.Sprint(st)
			})
			h.stop()
			versions := h.of(id)
			nb := versions[0].GetNotBefore().AsTime()
			for _, v := range versions {
				if v.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW {
					continue
				}
				if at := v.GetStatus().GetTimestamp().AsTime(); at.Before(nb) {
					t.Errorf("task left NEW at %v (%v), before not_before %v", at, v.GetStatus().GetState(), nb)
				}
				break
			}
			if got := states(versions); !slices.Equal(got, []api.TaskState{api.TaskState_TASK_STATE_NEW, api.TaskState_TASK_STATE_PENDING, api.TaskState_TASK_STATE_ASSIGNED}) {
				t.Errorf("delayed task went through %v", got)
			}
		})
	}
}

// TestUnschedulableTasksExplainWhy leaves the only node unable to take
// tasks: they stay PENDING and say why; once the node can take them,
// they are placed.
func TestUnschedulableTasksExplainWhy(t *testing.T) {
	tests := []struct {
		name    string
		node    func(n *api.Node)
		wantErr string
	}{
		{
			name: "drained",
			node: func(n *api.Node) {
				ready(n)
				n.Spec = &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_DRAIN}
			},
			wantErr: "1 node is not available for new tasks (paused or drained)",
		},
		{
			name: "paused",
			node: func(n *api.Node) {
				ready(n)
				n.Spec = &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_PAUSE}
			},
			wantErr: "paused or drained",
		},
		{
			name:    "down",
			node:    func(n *api.Node) { n.Status = &api.NodeStatus{State: api.NodeState_NODE_STATE_DOWN} },
			wantErr: "1 node is not ready",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := startManager(t)
			setNode(t, m, tc.node)
			svc := createService(t, m, spec("web", 2))
			await.For(t, "tasks pending with an explanation", func() (bool, string) {
				tasks := tasksOf(m, svc.GetId())
				if len(tasks) != 2 {
					return false, fmt.Sprintf("%d tasks", len(tasks))
				}
				for _, tk := range tasks {
					st := tk.GetStatus()
					if st.GetState() != api.TaskState_TASK_STATE_PENDING || !strings.Contains(st.GetErr(), tc.wantErr) {
						return false, fmt.Sprintf("task %s: %v %q", tk.GetId(), st.GetState(), st.GetErr())
					}
					if !strings.HasPrefix(st.GetErr(), "no suitable node") {
						return false, fmt.Sprintf("explanation %q", st.GetErr())
					}
				}
				return true, ""
			})
			for _, tk := range tasksOf(m, svc.GetId()) {
				if tk.GetNodeId() != "" {
					t.Errorf("unplaceable task %s has node %q", tk.GetId(), tk.GetNodeId())
				}
			}

			setNode(t, m, func(n *api.Node) {
				ready(n)
				n.Spec = &api.NodeSpec{Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE}
			})
			await.For(t, "tasks assigned once the node can take them", func() (bool, string) {
				for _, tk := range tasksOf(m, svc.GetId()) {
					st := tk.GetStatus()
					if st.GetState() != api.TaskState_TASK_STATE_ASSIGNED || tk.GetNodeId() != selfID || st.GetErr() != "" {
						return false, fmt.Sprintf("task %s: %v on %q err %q", tk.GetId(), st.GetState(), tk.GetNodeId(), st.GetErr())
					}
				}
				return true, ""
			})
		})
	}
}

func TestInitAndOpen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	dir := t.TempDir()
	if HasState(dir) {
		t.Fatal("empty dir reported as holding state")
	}
	if _, err := Open(ctx, testConfig(dir)); err == nil || !strings.Contains(err.Error(), "shoald init") {
		t.Fatalf("Open of an empty dir: %v, want an error pointing at shoald init", err)
	}
	m, err := Init(ctx, testConfig(dir), nil, &api.Node{Id: selfID}, Ingress{})
	if err != nil {
		t.Fatal(err)
	}
	var clusterID string
	m.State().Store().View(func(tx store.ReadTx) { clusterID = tx.Cluster().GetId() })
	if clusterID == "" {
		t.Error("Init stored no cluster object")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if !HasState(dir) {
		t.Fatal("dir holds no state after Init")
	}
	if _, err := Init(ctx, testConfig(dir), nil, &api.Node{Id: selfID}, Ingress{}); err == nil || !strings.Contains(err.Error(), "shoald run") {
		t.Fatalf("Init over existing state: %v, want an error pointing at shoald run", err)
	}
	m, err = Open(ctx, testConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	await.For(t, "state replayed after Open", func() (bool, string) {
		var got string
		var self *api.Node
		m.State().Store().View(func(tx store.ReadTx) {
			got = tx.Cluster().GetId()
			self = tx.Node(selfID)
		})
		return got == clusterID && self != nil, fmt.Sprintf("cluster %q, self %v", got, self)
	})
}
