package manager

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/store"
)

// fakeNodes plays the nodes of a cluster whose managers run in the test:
// an assigned task starts running (or fails, if its image is one of
// failing), a task told to stop stops. It writes through whichever
// manager leads, and keeps, per service, the fewest slots it saw serving
// while a rollout was on.
type fakeNodes struct {
	leader  func() *Manager
	failing map[string]bool

	mu         sync.Mutex
	minServing map[string]int // by service name
}

func runFakeNodes(t *testing.T, leader func() *Manager, failing ...string) *fakeNodes {
	f := &fakeNodes{leader: leader, failing: map[string]bool{}, minServing: map[string]int{}}
	for _, img := range failing {
		f.failing[img] = true
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			if m := f.leader(); m != nil {
				f.step(ctx, m)
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return f
}

func (f *fakeNodes) step(ctx context.Context, m *Manager) {
	var (
		tasks    []*api.Task
		services []*api.Service
	)
	m.State().Store().View(func(tx store.ReadTx) {
		tasks = tx.Tasks()
		services = tx.Services()
	})
	now := timestamppb.Now()
	for _, t := range tasks {
		c := proto.CloneOf(t)
		switch st := t.GetStatus().GetState(); {
		case t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && st == api.TaskState_TASK_STATE_ASSIGNED:
			if f.failing[t.GetSpec().GetContainer().GetImage()] {
				c.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_FAILED, Err: "task: non-zero exit (1)", Timestamp: now}
			} else {
				c.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_RUNNING, Message: "started", Timestamp: now, StartedAt: now}
			}
		case t.GetDesiredState() > api.TaskState_TASK_STATE_RUNNING && t.GetNodeId() != "" && !api.IsTerminal(st):
			c.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_SHUTDOWN, Timestamp: now, StartedAt: t.GetStatus().GetStartedAt()}
		default:
			continue
		}
		// A conflict (the orchestrator got there first) is retried on
		// the next step.
		_ = m.State().Propose(ctx, store.Update(c))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, svc := range services {
		st := svc.GetUpdateStatus().GetState()
		if st != api.UpdateState_UPDATE_STATE_UPDATING && st != api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED {
			continue
		}
		serving := map[uint64]bool{}
		for _, t := range tasks {
			if t.GetServiceId() == svc.GetId() && t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING && t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING {
				serving[t.GetSlot()] = true
			}
		}
		name := svc.GetSpec().GetName()
		if n, ok := f.minServing[name]; !ok || len(serving) < n {
			f.minServing[name] = len(serving)
		}
	}
}

// fewestServing is the fewest slots of service seen serving during its
// rollouts; -1 when none was seen.
func (f *fakeNodes) fewestServing(service string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n, ok := f.minServing[service]; ok {
		return n
	}
	return -1
}

func updateSpec(name string, replicas uint64, image string, cfg *api.UpdateConfig) *api.ServiceSpec {
	s := spec(name, replicas)
	s.Task.Container.Image = image
	s.Update = cfg
	s.Rollback = &api.UpdateConfig{Parallelism: 0, Monitor: durationpb.New(0)}
	return s
}

func storedService(m *Manager, id string) *api.Service {
	var svc *api.Service
	m.State().Store().View(func(tx store.ReadTx) { svc = tx.Service(id) })
	return svc
}

// awaitRunning waits until every slot of svc runs a task of its current
// spec version and nothing else is meant to run.
func awaitRunning(t *testing.T, m func() *Manager, svc *api.Service) {
	t.Helper()
	await.For(t, "every slot running the current spec", func() (bool, string) {
		cur := storedService(m(), svc.GetId())
		running := 0
		for _, tk := range tasksOf(m(), svc.GetId()) {
			if tk.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
				continue
			}
			if tk.GetSpecVersion() != cur.GetSpecVersion() || tk.GetStatus().GetState() != api.TaskState_TASK_STATE_RUNNING {
				return false, fmt.Sprintf("task %s: version %d %v", api.TaskName(tk), tk.GetSpecVersion(), tk.GetStatus().GetState())
			}
			running++
		}
		want := int(cur.GetSpec().GetReplicated().GetReplicas())
		return running == want, fmt.Sprintf("%d of %d running", running, want)
	})
}

// awaitRollout waits for the service's rollout to reach one of states.
func awaitRollout(t *testing.T, m func() *Manager, id string, states ...api.UpdateState) *api.Service {
	t.Helper()
	var svc *api.Service
	await.For(t, fmt.Sprintf("rollout %v", states), func() (bool, string) {
		svc = storedService(m(), id)
		st := svc.GetUpdateStatus()
		for _, want := range states {
			if st.GetState() == want {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%v: %s (%d updated, slots %v)", st.GetState(), st.GetMessage(), st.GetUpdated(), st.GetSlots())
	})
	return svc
}

// newTasksPerSlot counts, per slot, the tasks made for version with no
// restart before them: more than one means the slot was updated twice.
func newTasksPerSlot(tasks []*api.Task, version uint64) map[uint64]int {
	out := map[uint64]int{}
	for _, tk := range tasks {
		if tk.GetSpecVersion() == version && tk.GetRestartCount() == 0 {
			out[tk.GetSlot()]++
		}
	}
	return out
}

// TestRollingUpdate updates services through the control API on a real
// raft manager and follows the rollout in the store: the slots are
// replaced at the pace the update config sets, the status says where the
// rollout is, and failures pause or roll back.
func TestRollingUpdate(t *testing.T) {
	const replicas = 4
	monitor := durationpb.New(100 * time.Millisecond)
	tests := []struct {
		name  string
		cfg   *api.UpdateConfig
		image string
		// fewest is the fewest slots that may serve during the rollout.
		fewest int
		want   api.UpdateState
		// wantImage is what every slot runs at the end.
		wantImage string
		wantMsg   string
	}{
		{
			name:   "stop-first one at a time",
			cfg:    &api.UpdateConfig{Parallelism: 1, Monitor: monitor},
			image:  "example/echo:2",
			fewest: replicas - 1, want: api.UpdateState_UPDATE_STATE_COMPLETED, wantImage: "example/echo:2",
		},
		{
			name:   "stop-first two at a time",
			cfg:    &api.UpdateConfig{Parallelism: 2, Monitor: monitor},
			image:  "example/echo:2",
			fewest: replicas - 2, want: api.UpdateState_UPDATE_STATE_COMPLETED, wantImage: "example/echo:2",
		},
		{
			name:   "start-first two at a time",
			cfg:    &api.UpdateConfig{Parallelism: 2, Monitor: monitor, Order: api.UpdateOrder_UPDATE_ORDER_START_FIRST},
			image:  "example/echo:2",
			fewest: replicas, want: api.UpdateState_UPDATE_STATE_COMPLETED, wantImage: "example/echo:2",
		},
		{
			name:   "a failing image pauses the update",
			cfg:    &api.UpdateConfig{Parallelism: 1, Monitor: monitor},
			image:  "example/bad",
			fewest: replicas - 1, want: api.UpdateState_UPDATE_STATE_PAUSED,
			wantMsg: "update paused: task web.1.",
		},
		{
			name:   "a failing image is rolled back",
			cfg:    &api.UpdateConfig{Parallelism: 1, Monitor: monitor, FailureAction: api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK},
			image:  "example/bad",
			fewest: replicas - 1, want: api.UpdateState_UPDATE_STATE_ROLLBACK_COMPLETED, wantImage: "example/echo:1",
			wantMsg: "rollback completed",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := startManager(t)
			setNode(t, m, ready)
			leader := func() *Manager { return m }
			nodes := runFakeNodes(t, leader, "example/bad")
			svc := createService(t, m, spec("web", replicas))
			awaitRunning(t, leader, svc)

			resp, err := m.control.UpdateService(context.Background(), &api.UpdateServiceRequest{
				Service: "web", Spec: updateSpec("web", replicas, tt.image, tt.cfg),
			})
			if err != nil {
				t.Fatal(err)
			}
			version := resp.GetService().GetSpecVersion()
			if st := resp.GetService().GetUpdateStatus(); st.GetState() != api.UpdateState_UPDATE_STATE_UPDATING || st.GetSpecVersion() != version {
				t.Errorf("update answered with status %v", st)
			}
			end := awaitRollout(t, leader, svc.GetId(), tt.want)
			st := end.GetUpdateStatus()
			if !strings.Contains(st.GetMessage(), tt.wantMsg) {
				t.Errorf("message %q, want it to contain %q", st.GetMessage(), tt.wantMsg)
			}
			if st.GetStartedAt() == nil || (tt.want != api.UpdateState_UPDATE_STATE_PAUSED && st.GetCompletedAt() == nil) {
				t.Errorf("status lacks its times: %v", st)
			}
			if tt.wantImage != "" {
				awaitRunning(t, leader, svc)
				for _, tk := range tasksOf(m, svc.GetId()) {
					if tk.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && tk.GetSpec().GetContainer().GetImage() != tt.wantImage {
						t.Errorf("task %s runs %s, want %s", api.TaskName(tk), tk.GetSpec().GetContainer().GetImage(), tt.wantImage)
					}
				}
			}
			if tt.want == api.UpdateState_UPDATE_STATE_COMPLETED && st.GetUpdated() != replicas {
				t.Errorf("%d slots counted as updated, want %d", st.GetUpdated(), replicas)
			}
			if tt.want == api.UpdateState_UPDATE_STATE_PAUSED {
				// Only the first slot was tried; the others still run
				// the old spec.
				old := 0
				for _, tk := range tasksOf(m, svc.GetId()) {
					if tk.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING && tk.GetSpecVersion() != version {
						old++
					}
				}
				if old != replicas-1 {
					t.Errorf("%d slots still on the old spec after the pause, want %d", old, replicas-1)
				}
			}
			for slot, n := range newTasksPerSlot(tasksOf(m, svc.GetId()), version) {
				if n > 1 && tt.want == api.UpdateState_UPDATE_STATE_COMPLETED {
					t.Errorf("slot %d got %d new tasks", slot, n)
				}
			}
			if got := nodes.fewestServing("web"); got < tt.fewest {
				t.Errorf("%d slots serving at one point of the rollout, want at least %d", got, tt.fewest)
			}
		})
	}
}

// TestRollingUpdateNoTemplateChange: scaling and relabelling replace no
// task and start no rollout.
func TestRollingUpdateNoTemplateChange(t *testing.T) {
	m := startManager(t)
	setNode(t, m, ready)
	leader := func() *Manager { return m }
	runFakeNodes(t, leader)
	svc := createService(t, m, spec("web", 2))
	awaitRunning(t, leader, svc)
	before := tasksOf(m, svc.GetId())
	s := spec("web", 3)
	s.Labels = map[string]string{"team": "a"}
	resp, err := m.control.UpdateService(context.Background(), &api.UpdateServiceRequest{Service: "web", Spec: s})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetService().GetUpdateStatus() != nil || resp.GetService().GetSpecVersion() != svc.GetSpecVersion() {
		t.Errorf("scale started a rollout: version %d status %v", resp.GetService().GetSpecVersion(), resp.GetService().GetUpdateStatus())
	}
	awaitRunning(t, leader, svc)
	for _, tk := range before {
		if storedTask(m, tk.GetId()).GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
			t.Errorf("task %s was replaced by a scale", api.TaskName(tk))
		}
	}
}

// cluster3 is three managers on in-memory raft transports, the first
// (selfID) made first and leading; the test stops them.
type cluster3 struct {
	managers []*Manager
	stops    []func()
}

func startCluster3(t *testing.T) *cluster3 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	var transports []*raft.InmemTransport
	for _, id := range []string{selfID, "n2", "n3"} {
		_, tr := raft.NewInmemTransport(raft.ServerAddress(id))
		transports = append(transports, tr)
	}
	for _, a := range transports {
		for _, b := range transports {
			if a != b {
				a.Connect(b.LocalAddr(), b)
			}
		}
	}
	c := &cluster3{}
	for i, tr := range transports {
		cfg := testConfig(t.TempDir())
		cfg.NodeID = string(tr.LocalAddr())
		cfg.Transport = tr
		var (
			m   *Manager
			err error
		)
		if i == 0 {
			self := &api.Node{Id: cfg.NodeID, Role: api.NodeRole_NODE_ROLE_MANAGER, Description: &api.NodeDescription{Hostname: "host-1"}}
			m, err = Init(ctx, cfg, nil, self, Ingress{})
		} else {
			m, err = Join(cfg)
			if err == nil {
				err = c.managers[0].State().AddVoter(cfg.NodeID, cfg.NodeID)
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := m.Run(runCtx); err != nil {
				t.Errorf("run: %v", err)
			}
		})
		var once sync.Once
		c.managers = append(c.managers, m)
		c.stops = append(c.stops, func() {
			once.Do(func() {
				stop()
				wg.Wait()
				m.Close()
			})
		})
	}
	t.Cleanup(func() {
		for _, stop := range c.stops {
			stop()
		}
	})
	return c
}

// leader returns the manager that leads among those still running.
func (c *cluster3) leader(stopped map[int]bool) *Manager {
	for i, m := range c.managers {
		if !stopped[i] && m.State().IsLeader() {
			return m
		}
	}
	return nil
}

// TestRollingUpdateResumes stops the leader in the middle of a rollout,
// with a slot being monitored: the manager that leads next (the same one
// restarted, or another of three) goes on from the status in raft,
// updating every slot exactly once and counting each once.
func TestRollingUpdateResumes(t *testing.T) {
	const replicas = 4
	cfg := &api.UpdateConfig{Parallelism: 1, Monitor: durationpb.New(time.Second)}
	// midway waits until the rollout has updated a slot and watches
	// another: the moment to lose the leader.
	midway := func(t *testing.T, leader func() *Manager, id string) {
		await.For(t, "a rollout halfway", func() (bool, string) {
			st := storedService(leader(), id).GetUpdateStatus()
			return st.GetUpdated() >= 1 && len(st.GetSlots()) == 1 && st.GetSlots()[0].GetPhase() == api.UpdatePhase_UPDATE_PHASE_MONITORING,
				fmt.Sprintf("%d updated, slots %v", st.GetUpdated(), st.GetSlots())
		})
	}
	check := func(t *testing.T, leader func() *Manager, svc *api.Service) {
		end := awaitRollout(t, leader, svc.GetId(), api.UpdateState_UPDATE_STATE_COMPLETED)
		awaitRunning(t, leader, svc)
		st := end.GetUpdateStatus()
		if st.GetUpdated() != replicas || st.GetFailures() != 0 {
			t.Errorf("%d updated, %d failures; want %d and 0", st.GetUpdated(), st.GetFailures(), replicas)
		}
		perSlot := newTasksPerSlot(tasksOf(leader(), svc.GetId()), end.GetSpecVersion())
		for slot := uint64(1); slot <= replicas; slot++ {
			if perSlot[slot] != 1 {
				t.Errorf("slot %d got %d tasks of the new spec, want exactly 1", slot, perSlot[slot])
			}
		}
	}
	update := func(t *testing.T, m *Manager) {
		if _, err := m.control.UpdateService(context.Background(), &api.UpdateServiceRequest{
			Service: "web", Spec: updateSpec("web", replicas, "example/echo:2", cfg),
		}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("restarted manager", func(t *testing.T) {
		dir := t.TempDir()
		ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
		defer cancel()
		self := &api.Node{Id: selfID, Role: api.NodeRole_NODE_ROLE_MANAGER, Description: &api.NodeDescription{Hostname: "host-1"}}
		m, err := Init(ctx, testConfig(dir), nil, self, Ingress{})
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu  sync.Mutex
			cur = m
		)
		leader := func() *Manager {
			mu.Lock()
			defer mu.Unlock()
			if cur == nil || !cur.State().IsLeader() {
				return nil
			}
			return cur
		}
		run := func(m *Manager) func() {
			runCtx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { m.Run(runCtx) })
			return func() {
				stop()
				wg.Wait()
				m.Close()
			}
		}
		stop := run(m)
		setNode(t, m, ready)
		runFakeNodes(t, leader)
		svc := createService(t, m, spec("web", replicas))
		awaitRunning(t, leader, svc)
		update(t, m)
		midway(t, leader, svc.GetId())

		mu.Lock()
		cur = nil
		mu.Unlock()
		stop()
		m, err = Open(ctx, testConfig(dir))
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		cur = m
		mu.Unlock()
		t.Cleanup(run(m))
		check(t, func() *Manager {
			await.For(t, "a leader", func() bool { return leader() != nil })
			return leader()
		}, svc)
	})

	t.Run("new leader", func(t *testing.T) {
		c := startCluster3(t)
		var (
			mu      sync.Mutex
			stopped = map[int]bool{}
		)
		leader := func() *Manager {
			mu.Lock()
			defer mu.Unlock()
			return c.leader(stopped)
		}
		setNode(t, c.managers[0], ready)
		runFakeNodes(t, leader)
		svc := createService(t, c.managers[0], spec("web", replicas))
		awaitRunning(t, leader, svc)
		update(t, c.managers[0])
		midway(t, leader, svc.GetId())

		mu.Lock()
		stopped[0] = true
		mu.Unlock()
		c.stops[0]()
		await.For(t, "a new leader", func() bool { return leader() != nil })
		check(t, func() *Manager {
			await.For(t, "a leader", func() bool { return leader() != nil })
			return leader()
		}, svc)
	})
}
