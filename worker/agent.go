package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/seal"
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
	// reportTimeout bounds one status report: a raft write on the leader,
	// which gives up on its own after 10 s. A report cut short is sent
	// again, on the next session if this one ended.
	reportTimeout = 10 * time.Second
	// defaultGraceMultiplier gives the heartbeat grace a manager that does
	// not say it uses (dispatcher.DefaultGraceMultiplier): three periods.
	defaultGraceMultiplier = 3
	// defaultGrace is the grace assumed before any manager named one:
	// the dispatcher's default period times the multiplier.
	defaultGrace = defaultGraceMultiplier * 750 * time.Millisecond
	// minOpenTimeout is the least time a manager gets to open a session:
	// opening writes the node's state through raft, which on a loaded
	// machine can take a good part of a second.
	minOpenTimeout = 2 * time.Second
)

// errManagerSilent ends a session whose manager stopped answering in time:
// it is dead, stopped, or behind a network that drops its packets, and
// its connection may look healthy for minutes. The agent drops that
// connection and looks for another manager.
var errManagerSilent = errors.New("manager did not answer in time")

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
	// OnRenewCertificate, if set, hears that the managers want this node
	// to renew its certificate now (a CA rotation); it must not block.
	OnRenewCertificate func()
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
	// CacheKey seals the assignments kept in StateDir, which hold the
	// tasks' specs, environment included (seal.KeySize bytes; required
	// with StateDir). The daemon derives it from the node's private key;
	// a saved set that does not open with it is ignored. SetCacheKey
	// replaces it.
	CacheKey []byte
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
	// Update replaces the list of managers.
	Update(managers []*api.ManagerNode)
	// Vouch records that a trusted manager named nodeID as the leader at
	// addr (a manager promoted since the list was last updated).
	Vouch(nodeID, addr string)
	// Silent says the manager at addr stopped answering: its connection
	// is dropped, and it is passed over (even when a follower names it as
	// the leader) for a while, in favour of the others.
	Silent(addr string)
}

// Agent runs a node's tasks.
type Agent struct {
	cfg    Config
	client api.DispatcherClient
	logger *slog.Logger

	mu        sync.Mutex
	sessionID string
	// sessionCtx ends with the session sessionID names: calls made for
	// it (status reports) are cut short when it ends.
	sessionCtx context.Context
	// grace is the heartbeat grace of the last session's manager.
	grace time.Duration

	tasks map[string]*runner // by task id
	// live holds every runner whose goroutine has not returned, by task
	// id: those in tasks and those still stopping their container. Their
	// containers are theirs; any other container is an orphan.
	live map[string]*runner
	// sweeping is set while a sweep waits for the runtime to answer.
	sweeping bool
	// desc is the node's last description, sent again when the executor
	// cannot describe the node (its runtime is down).
	desc    *api.NodeDescription
	pending map[string]*api.TaskStatus
	kick    chan struct{} // wakes the reporter
	dirty   chan struct{} // the assignments changed: persist them
	// cacheKey seals the saved assignments (Config.CacheKey, then
	// SetCacheKey).
	cacheKey []byte

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
	if cfg.StateDir != "" && len(cfg.CacheKey) != seal.KeySize {
		// A wiring mistake, not a condition to run with: the tasks'
		// environment would reach the disk in the clear.
		panic(fmt.Sprintf("worker: a StateDir needs a %d-byte CacheKey, got %d bytes", seal.KeySize, len(cfg.CacheKey)))
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
		live:      map[string]*runner{},
		pending:   map[string]*api.TaskStatus{},
		kick:      make(chan struct{}, 1),
		dirty:     make(chan struct{}, 1),
		firstSync: make(chan struct{}),
		grace:     defaultGrace,
		cacheKey:  cfg.CacheKey,
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
	redirected := false
	for ctx.Err() == nil {
		start := time.Now()
		addr := ""
		if a.cfg.Managers != nil {
			conn, to, err := a.cfg.Managers.Conn(ctx, hint)
			if err != nil {
				a.logger.Warn("no manager to connect to", "err", err)
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, a.maxBackoff())
				continue
			}
			addr = to
			a.mu.Lock()
			a.client = api.NewDispatcherClient(conn)
			a.mu.Unlock()
			a.logger.Debug("connecting to manager", "addr", addr)
		}
		var err error
		hint, err = a.session(ctx)
		if hint != "" && !redirected {
			// A follower named the leader: go there at once. Only once in
			// a row: a follower may name a leader that is gone (or that
			// this node cannot reach) until the next election.
			redirected = true
			continue
		}
		redirected = false
		if ctx.Err() != nil {
			break
		}
		if errors.Is(err, errManagerSilent) && a.cfg.Managers != nil {
			a.cfg.Managers.Silent(addr)
		}
		if time.Since(start) > 10*reconnectMax {
			backoff = reconnectMin
		}
		a.logger.Warn("dispatcher session ended; reconnecting", "manager", addr, "err", err, "in", backoff)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, a.maxBackoff())
	}
	a.mu.Lock()
	for _, r := range a.tasks {
		r.detach()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return nil
}

// maxBackoff is the longest wait between two attempts to open a session:
// reconnectMax, but short enough that a few attempts fit in the grace,
// so that the node finds a new leader before it is marked down.
func (a *Agent) maxBackoff() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return max(reconnectMin, min(reconnectMax, a.grace/2))
}

// silentAfter cancels ctx with errManagerSilent once d has passed, unless
// the returned stop is called first.
func silentAfter(cancel context.CancelCauseFunc, d time.Duration) (stop func() bool) {
	return time.AfterFunc(d, func() { cancel(fmt.Errorf("%w (%v)", errManagerSilent, d)) }).Stop
}

// session runs one session until it fails. It returns the leader's
// address when the manager it reached is a follower that named it, and
// an error wrapping errManagerSilent when the manager stopped answering.
//
// Every wait on the manager is bounded by the heartbeat grace: opening the
// session (minOpenTimeout at least) and each heartbeat (half the grace).
// A manager that goes silent is so left within a period and half a grace,
// leaving the other half to open a session with the new leader before it
// marks the node down. Keepalive (identity.KeepaliveDialOption) backs the
// streams up, but pings no more often than every 10 s.
func (a *Agent) session(ctx context.Context) (string, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	desc, err := a.describe(ctx)
	if err != nil {
		return "", err
	}
	a.mu.Lock()
	client := a.client
	openTimeout := max(a.grace, minOpenTimeout)
	a.mu.Unlock()
	stopOpen := silentAfter(cancel, openTimeout)
	sess, err := client.Session(ctx, &api.SessionRequest{NodeId: a.cfg.NodeID, Description: desc})
	if err != nil {
		stopOpen()
		return "", fmt.Errorf("open session: %w", sessionErr(ctx, err))
	}
	first, err := sess.Recv()
	stopOpen()
	if err != nil {
		if leader := sess.Trailer().Get(leaderHeader); len(leader) > 0 && status.Code(err) == codes.Unavailable {
			if node := sess.Trailer().Get(leaderNodeHeader); len(node) > 0 && a.cfg.Managers != nil {
				a.cfg.Managers.Vouch(node[0], leader[0])
			}
			return leader[0], err
		}
		return "", fmt.Errorf("open session: %w", sessionErr(ctx, err))
	}
	if a.cfg.Managers != nil {
		if len(first.GetManagerNodes()) > 0 {
			a.cfg.Managers.Update(first.GetManagerNodes())
		} else if len(first.GetManagers()) > 0 {
			a.cfg.Managers.Update(ManagerNodes(first.GetManagers()))
		}
	}
	grace := first.GetHeartbeatGrace().AsDuration()
	if grace <= 0 {
		grace = defaultGraceMultiplier * first.GetHeartbeatPeriod().AsDuration()
	}
	sid := first.GetSessionId()
	a.logger.Info("session opened", "session", sid, "grace", grace)
	a.mu.Lock()
	a.sessionID = sid
	a.sessionCtx = ctx
	a.grace = grace
	a.mu.Unlock()
	a.signal()
	defer func() {
		// Reports wait for the next session rather than fail on this one.
		a.mu.Lock()
		if a.sessionID == sid {
			a.sessionID = ""
		}
		a.mu.Unlock()
	}()

	// The session's goroutines end with ctx; wait for them, so that no
	// assignment is applied after the session (or Run) has returned.
	var wg sync.WaitGroup
	defer func() {
		cancel(nil)
		wg.Wait()
	}()
	errc := make(chan error, 3)
	wg.Add(3)
	go func() { // the session stream: it ends when the session does
		defer wg.Done()
		for {
			msg, err := sess.Recv()
			if err != nil {
				errc <- fmt.Errorf("session stream: %w", sessionErr(ctx, err))
				return
			}
			// The managers changed: a demoted manager must not be
			// trusted a moment longer than the leader does.
			if a.cfg.Managers != nil && len(msg.GetManagerNodes()) > 0 {
				a.cfg.Managers.Update(msg.GetManagerNodes())
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
			hctx, hcancel := context.WithTimeout(ctx, grace/2)
			resp, err := client.Heartbeat(hctx, &api.HeartbeatRequest{SessionId: sid})
			hcancel()
			if err != nil {
				if ctx.Err() == nil && status.Code(err) == codes.DeadlineExceeded {
					err = fmt.Errorf("%w: no answer in %v: %w", errManagerSilent, grace/2, err)
				}
				errc <- fmt.Errorf("heartbeat: %w", err)
				return
			}
			period = resp.GetPeriod().AsDuration()
			if a.cfg.OnDesiredRole != nil && resp.GetDesiredRole() != api.NodeRole_NODE_ROLE_UNSPECIFIED {
				a.cfg.OnDesiredRole(resp.GetDesiredRole())
			}
			if a.cfg.OnRenewCertificate != nil && resp.GetRenewCertificate() {
				a.cfg.OnRenewCertificate()
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

// describe is the node's description for a new session. When the
// executor cannot give one (its runtime is down) the last one is sent
// again: the node is up, and its tasks run on.
func (a *Agent) describe(ctx context.Context) (*api.NodeDescription, error) {
	desc, err := a.cfg.Executor.Describe(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		if a.desc == nil {
			return nil, fmt.Errorf("describe node: %w", err)
		}
		a.logger.Warn("cannot describe the node; sending its last description", "err", err)
		return proto.Clone(a.desc).(*api.NodeDescription), nil
	}
	desc.DataAddr = a.cfg.DataAddr
	a.desc = proto.Clone(desc).(*api.NodeDescription)
	return desc, nil
}

// sessionErr is the session's cause (errManagerSilent) when its context
// ended it, err otherwise.
func sessionErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); cause != nil && errors.Is(cause, errManagerSilent) {
		return cause
	}
	return err
}

// maxAssignmentParts bounds the parts of one assignments message a worker
// keeps: at the manager's 1 MiB a part, 1 GiB, far past any cluster.
const maxAssignmentParts = 1024

// leaderHeader is the trailer in which a follower names the leader
// (dispatcher.LeaderHeader; not imported: workers do not link managers).
const leaderHeader = "shoal-leader"

// leaderNodeHeader names the leader's node (dispatcher.LeaderNodeHeader).
const leaderNodeHeader = "shoal-leader-node"

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
// longer owns, for example after it was down). While the runtime does not
// answer, that sweep waits for it; the set is applied all the same.
func (a *Agent) applyFull(ctx context.Context, changes []*api.AssignmentChange) error {
	want := map[string]*api.Task{}
	for _, c := range changes {
		if c.GetAction() == api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE {
			want[c.GetTask().GetId()] = c.GetTask()
		}
	}
	a.mu.Lock()
	for id, r := range a.tasks {
		if want[id] == nil {
			r.remove()
			delete(a.tasks, id)
		}
	}
	a.mu.Unlock()
	for _, t := range want {
		a.applyChange(&api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
	}
	containers, err := a.cfg.Executor.Containers(ctx)
	switch {
	case errors.Is(err, exec.ErrRuntimeUnavailable):
		a.sweepLater(ctx)
	case err != nil:
		return fmt.Errorf("list containers: %w", err)
	default:
		a.sweep(containers)
	}
	return nil
}

// sweep removes the containers no runner owns. A runner removes its own
// container, including one told to stop just now (it is live until it
// has), and a second remover would race it.
func (a *Agent) sweep(containers []exec.Container) {
	a.mu.Lock()
	var orphans []exec.Container
	for _, c := range containers {
		if a.live[c.TaskID] == nil {
			orphans = append(orphans, c)
		}
	}
	a.mu.Unlock()
	for _, c := range orphans {
		a.logger.Info("removing container of a task this node no longer owns", "task", c.TaskID, "container", c.ID)
		a.removeOrphan(c)
	}
}

// sweepLater lists the containers once the runtime answers again, and
// sweeps them then, unless ctx (the session) ends first: the next
// session's full set sweeps anew.
func (a *Agent) sweepLater(ctx context.Context) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sweeping {
		return
	}
	a.sweeping = true
	a.logger.Warn("container runtime unreachable: tasks are left as they are; containers of tasks this node no longer owns go once it answers")
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer func() {
			a.mu.Lock()
			a.sweeping = false
			a.mu.Unlock()
		}()
		backoff := runtimeRetryMin
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			containers, err := a.cfg.Executor.Containers(ctx)
			if err == nil {
				a.logger.Info("container runtime answers again: sweeping", "containers", len(containers))
				a.sweep(containers)
				return
			}
			if !errors.Is(err, exec.ErrRuntimeUnavailable) {
				a.logger.Warn("list containers for the sweep", "err", err)
			}
			backoff = min(2*backoff, runtimeRetryMax)
		}
	}()
}

// runnerDone forgets a runner whose goroutine returned.
func (a *Agent) runnerDone(r *runner) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, l := range a.live {
		if l == r {
			delete(a.live, id)
		}
	}
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
		a.live[t.GetId()] = r
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
			sctx := a.sessionCtx
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
			rctx, cancel := context.WithTimeout(sctx, reportTimeout)
			_, err := client.UpdateTaskStatus(rctx, req)
			cancel()
			if err != nil {
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
