package worker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// Timings of the agent's connection to the managers.
const (
	// reconnectMin and reconnectMax bound the back-off between failed
	// sessions: fast enough to follow a leader change, slow enough not to
	// hammer a manager that is down.
	reconnectMin = 50 * time.Millisecond
	reconnectMax = 2 * time.Second
	// reportRetry is the wait before re-sending status reports that failed.
	reportRetry = 100 * time.Millisecond
)

// Config is what an agent needs.
type Config struct {
	NodeID   string
	Executor exec.Executor
	// Conn reaches the dispatcher. Set either Conn (one fixed manager) or
	// Managers (fail over between managers, follow the leader).
	Conn     grpc.ClientConnInterface
	Managers Managers
	Logger   *slog.Logger
	// OnDesiredRole, if set, hears the role the managers want this node
	// to have, with every heartbeat.
	OnDesiredRole func(api.NodeRole)
	// Network, if set, hears the node's network view with every
	// assignments message, before the message's task changes.
	Network NetworkView
	// DrainDelay is how long a running task with network attachments
	// keeps running after the managers asked it to stop, so that every
	// node has taken it out of its load balancers first; 0 stops at once.
	DrainDelay time.Duration
	// DataAddr is the node's underlay address (its VTEP), reported to the
	// managers so that other nodes can reach its overlays.
	DataAddr string
	// StateDir, if set, keeps the node's assignments on disk, so that
	// after a restart the agent watches its tasks (and reports what
	// happened to them) before any manager is reachable.
	StateDir string
}

// NetworkView programs the node's networks: the worker's network agent.
type NetworkView interface {
	// Apply merges delta into the view (replacing it when full) and
	// programs the result. It returns once the load balancers are
	// programmed, so a backend removed in delta gets no new connections
	// by then; on error it keeps retrying on its own.
	Apply(ctx context.Context, delta *api.NetworkDelta, full bool) error
}

// Managers hands the agent connections to managers.
type Managers interface {
	// Conn returns a connection to try: the leader if hint names it, else
	// the next manager in turn.
	Conn(ctx context.Context, hint string) (grpc.ClientConnInterface, string, error)
	// Update replaces the list of manager addresses.
	Update(addrs []string)
}

// Agent runs a node's tasks.
type Agent struct {
	cfg    Config
	client api.DispatcherClient
	logger *slog.Logger

	mu        sync.Mutex
	sessionID string
	tasks     map[string]*runner // by task id
	pending   map[string]*api.TaskStatus
	kick      chan struct{} // wakes the reporter
	dirty     chan struct{} // the assignments changed: persist them

	// firstSync is closed after the first full assignment set was applied.
	firstSync     chan struct{}
	firstSyncOnce sync.Once
	wg            sync.WaitGroup
	// images loads the images the managers distribute; nil when the
	// executor cannot.
	images *imageSync
}

// New returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var client api.DispatcherClient
	if cfg.Conn != nil {
		client = api.NewDispatcherClient(cfg.Conn)
	}
	a := &Agent{
		cfg:       cfg,
		client:    client,
		logger:    cfg.Logger.With("node", cfg.NodeID),
		tasks:     map[string]*runner{},
		pending:   map[string]*api.TaskStatus{},
		kick:      make(chan struct{}, 1),
		dirty:     make(chan struct{}, 1),
		firstSync: make(chan struct{}),
	}
	if loader, ok := cfg.Executor.(exec.ImageLoader); ok {
		a.images = newImageSync(loader, a.fetchImage, a.logger)
	}
	return a
}

// Synced is closed once the agent has applied its first full set of
// assignments (and so adopted or removed the containers it found).
func (a *Agent) Synced() <-chan struct{} { return a.firstSync }

// Run keeps a session open until ctx ends. Running containers are left
// running when it returns: they belong to the node, not to this process.
func (a *Agent) Run(ctx context.Context) error {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.reportLoop(ctx)
	}()
	if a.images != nil {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.images.run(ctx)
		}()
	}
	if a.cfg.StateDir != "" {
		a.restoreAssignments()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.persistLoop(ctx)
		}()
	}
	backoff := reconnectMin
	hint := ""
	for ctx.Err() == nil {
		start := time.Now()
		if a.cfg.Managers != nil {
			conn, addr, err := a.cfg.Managers.Conn(ctx, hint)
			if err != nil {
				a.logger.Warn("no manager to connect to", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, reconnectMax)
				continue
			}
			a.mu.Lock()
			a.client = api.NewDispatcherClient(conn)
			a.mu.Unlock()
			a.logger.Debug("connecting to manager", "addr", addr)
		}
		var err error
		hint, err = a.session(ctx)
		if hint != "" {
			// A follower named the leader: go there at once.
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if time.Since(start) > 10*reconnectMax {
			backoff = reconnectMin
		}
		a.logger.Warn("dispatcher session ended; reconnecting", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, reconnectMax)
	}
	a.mu.Lock()
	for _, r := range a.tasks {
		r.detach()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// session runs one session until it fails. It returns the leader's
// address when the manager it reached is a follower that named it.
func (a *Agent) session(ctx context.Context) (string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	desc, err := a.cfg.Executor.Describe(ctx)
	if err != nil {
		return "", fmt.Errorf("describe node: %w", err)
	}
	desc.DataAddr = a.cfg.DataAddr
	a.mu.Lock()
	client := a.client
	a.mu.Unlock()
	sess, err := client.Session(ctx, &api.SessionRequest{NodeId: a.cfg.NodeID, Description: desc})
	if err != nil {
		return "", fmt.Errorf("open session: %w", err)
	}
	first, err := sess.Recv()
	if err != nil {
		if leader := sess.Trailer().Get(leaderHeader); len(leader) > 0 && status.Code(err) == codes.Unavailable {
			return leader[0], err
		}
		return "", fmt.Errorf("open session: %w", err)
	}
	if a.cfg.Managers != nil && len(first.GetManagers()) > 0 {
		a.cfg.Managers.Update(first.GetManagers())
	}
	sid := first.GetSessionId()
	a.logger.Info("session opened", "session", sid)
	a.mu.Lock()
	a.sessionID = sid
	a.mu.Unlock()
	a.signal()

	// The session's goroutines end with ctx; wait for them, so that no
	// assignment is applied after the session (or Run) has returned.
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	errc := make(chan error, 3)
	wg.Add(3)
	go func() { // the session stream: it ends when the session does
		defer wg.Done()
		for {
			if _, err := sess.Recv(); err != nil {
				errc <- fmt.Errorf("session stream: %w", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		period := first.GetHeartbeatPeriod().AsDuration()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(period):
			}
			resp, err := client.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: sid})
			if err != nil {
				errc <- fmt.Errorf("heartbeat: %w", err)
				return
			}
			period = resp.GetPeriod().AsDuration()
			if a.cfg.OnDesiredRole != nil && resp.GetDesiredRole() != api.NodeRole_NODE_ROLE_UNSPECIFIED {
				a.cfg.OnDesiredRole(resp.GetDesiredRole())
			}
		}
	}()
	go func() {
		defer wg.Done()
		errc <- a.assignments(ctx, client, sid)
	}()
	if a.images != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.watchImages(ctx, client, sid)
		}()
	}
	return "", <-errc
}

// maxAssignmentParts bounds the parts of one assignments message a worker
// keeps: at the manager's 1 MiB a part, 1 GiB, far past any cluster.
const maxAssignmentParts = 1024

// leaderHeader is the trailer in which a follower names the leader
// (dispatcher.LeaderHeader; not imported: workers do not link managers).
const leaderHeader = "shoal-leader"

func (a *Agent) assignments(ctx context.Context, client api.DispatcherClient, sid string) error {
	stream, err := client.Assignments(ctx, &api.AssignmentsRequest{SessionId: sid})
	if err != nil {
		return fmt.Errorf("open assignments: %w", err)
	}
	var seq uint64
	var parts []*api.AssignmentsMessage
	for {
		msg, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("assignments stream: %w", err)
		}
		// A message too large to send whole comes in parts; apply them
		// together, never half a set.
		if msg.GetType() == api.AssignmentType_ASSIGNMENT_TYPE_PART {
			if len(parts) >= maxAssignmentParts {
				return fmt.Errorf("assignments: more than %d parts of one message", maxAssignmentParts)
			}
			parts = append(parts, msg)
			continue
		}
		if msg, err = api.JoinAssignments(parts, msg); err != nil {
			return err
		}
		parts = nil
		full := msg.GetType() == api.AssignmentType_ASSIGNMENT_TYPE_FULL
		if !full && msg.GetAppliesTo() != seq {
			// A gap: our set is not what the dispatcher thinks. Reopen
			// for a full set.
			return fmt.Errorf("assignments: delta applies to %d but we hold %d; resyncing", msg.GetAppliesTo(), seq)
		}
		// Networks first: a backend leaves the load balancers before its
		// container is stopped, and a new task's network exists before
		// its container is connected.
		if a.cfg.Network != nil && (full || msg.GetNetwork() != nil) {
			if err := a.cfg.Network.Apply(ctx, msg.GetNetwork(), full); err != nil {
				a.logger.Warn("apply network view; retrying in the background", "err", err)
			}
		}
		switch msg.GetType() {
		case api.AssignmentType_ASSIGNMENT_TYPE_FULL:
			if err := a.applyFull(ctx, msg.GetChanges()); err != nil {
				return err
			}
			a.firstSyncOnce.Do(func() { close(a.firstSync) })
			a.markDirty()
		case api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL:
			for _, c := range msg.GetChanges() {
				a.applyChange(c)
			}
			a.markDirty()
		default:
			return fmt.Errorf("assignments: unknown message type %v", msg.GetType())
		}
		seq = msg.GetResultsIn()
	}
}

// applyFull makes the node's tasks exactly the given set: new tasks start,
// tasks not in the set are removed, and containers the runtime holds for
// tasks outside the set are removed too (they belong to tasks this node no
// longer owns, for example after it was down).
func (a *Agent) applyFull(ctx context.Context, changes []*api.AssignmentChange) error {
	want := map[string]*api.Task{}
	for _, c := range changes {
		if c.GetAction() == api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE {
			want[c.GetTask().GetId()] = c.GetTask()
		}
	}
	containers, err := a.cfg.Executor.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	a.mu.Lock()
	// known holds every task that has a runner, including those removed
	// just now: a runner removes its own container, and a second remover
	// would race it.
	known := map[string]bool{}
	for id, r := range a.tasks {
		known[id] = true
		if want[id] == nil {
			r.remove()
			delete(a.tasks, id)
		}
	}
	a.mu.Unlock()
	for _, c := range containers {
		if want[c.TaskID] == nil && !known[c.TaskID] {
			a.logger.Info("removing container of a task this node no longer owns", "task", c.TaskID, "container", c.ID)
			a.removeOrphan(c)
		}
	}
	for _, t := range want {
		a.applyChange(&api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
	}
	return nil
}

func (a *Agent) removeOrphan(c exec.Container) {
	ctrl, err := a.cfg.Executor.Controller(&api.Task{Id: c.TaskID, ServiceId: c.ServiceID, Slot: c.Slot, NodeId: a.cfg.NodeID})
	if err != nil {
		a.logger.Error("controller for orphan container", "task", c.TaskID, "err", err)
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := ctrl.Shutdown(ctx); err != nil {
			a.logger.Warn("stop orphan container", "task", c.TaskID, "err", err)
		}
		if err := ctrl.Remove(ctx); err != nil {
			a.logger.Error("remove orphan container", "task", c.TaskID, "err", err)
		}
	}()
}

func (a *Agent) applyChange(c *api.AssignmentChange) {
	t := c.GetTask()
	a.mu.Lock()
	defer a.mu.Unlock()
	r := a.tasks[t.GetId()]
	switch c.GetAction() {
	case api.AssignmentAction_ASSIGNMENT_ACTION_REMOVE:
		if r != nil {
			r.remove()
			delete(a.tasks, t.GetId())
		}
	case api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE:
		if r != nil {
			r.update(t)
			return
		}
		ctrl, err := a.cfg.Executor.Controller(t)
		if err != nil {
			a.reportLocked(t.GetId(), failed(t, api.TaskState_TASK_STATE_REJECTED, fmt.Errorf("make controller: %w", err)))
			return
		}
		r = newRunner(a, t, ctrl)
		a.tasks[t.GetId()] = r
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			r.run()
		}()
	}
}

// report queues a task status for the dispatcher; only the latest status
// of a task is kept, since states only move forward.
func (a *Agent) report(taskID string, st *api.TaskStatus) {
	a.mu.Lock()
	a.reportLocked(taskID, st)
	a.mu.Unlock()
}

func (a *Agent) reportLocked(taskID string, st *api.TaskStatus) {
	if prev := a.pending[taskID]; prev != nil && prev.GetState() > st.GetState() {
		return
	}
	a.pending[taskID] = st
	a.signal()
}

func (a *Agent) signal() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// reportLoop sends queued statuses in batches: while one batch is in
// flight the next one gathers, so a burst of changes costs few raft writes.
func (a *Agent) reportLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		}
		for {
			a.mu.Lock()
			sid := a.sessionID
			client := a.client
			batch := a.pending
			if len(batch) == 0 || sid == "" {
				a.mu.Unlock()
				break
			}
			// At most api.MaxStatusUpdates a call: the rest stays pending
			// for the next turn of the loop.
			if len(batch) > api.MaxStatusUpdates {
				rest := batch
				batch = map[string]*api.TaskStatus{}
				for id, st := range rest {
					if len(batch) == api.MaxStatusUpdates {
						break
					}
					batch[id] = st
					delete(rest, id)
				}
				a.pending = rest
			} else {
				a.pending = map[string]*api.TaskStatus{}
			}
			a.mu.Unlock()
			req := &api.UpdateTaskStatusRequest{SessionId: sid}
			for id, st := range batch {
				req.Updates = append(req.Updates, &api.TaskStatusUpdate{TaskId: id, Status: st})
			}
			if _, err := client.UpdateTaskStatus(ctx, req); err != nil {
				if ctx.Err() != nil {
					return
				}
				a.mu.Lock()
				for id, st := range batch {
					if cur := a.pending[id]; cur == nil || cur.GetState() < st.GetState() {
						a.pending[id] = st
					}
				}
				// The session expired; a new one re-kicks us. Only forget
				// the one the batch named: a newer session may already be
				// open, and clearing it would stall reports until the next.
				if status.Code(err) == codes.NotFound && a.sessionID == sid {
					a.sessionID = ""
				}
				a.mu.Unlock()
				a.logger.Warn("report task status", "err", err, "tasks", len(batch))
				select {
				case <-ctx.Done():
					return
				case <-time.After(reportRetry):
				}
			}
		}
	}
}
