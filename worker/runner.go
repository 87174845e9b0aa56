package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// removeTimeout bounds the clean-up of one container; past it the
// container is left for the next full sync to find.
const removeTimeout = 2 * time.Minute

// deadCleanupDelay is how long the container of a task that ended by
// itself is kept before removal: about the time its replacement takes to
// start on a busy node.
const deadCleanupDelay = time.Second

// listenWait bounds how long a started networked task may take to open a
// TCP port before it is reported RUNNING all the same (a task that listens
// on UDP only, or on nothing): long enough for a server that binds as it
// starts (milliseconds), short enough that one that never listens is not
// held back much. Servers that take longer want a health check.
const listenWait = time.Second

// runner drives one task: it brings the container to the task's desired
// state and reports every state it reaches. One goroutine (run) does the
// work; update and remove only change what it aims for.
type runner struct {
	agent  *Agent
	ctrl   exec.Controller
	logger *slog.Logger

	mu      sync.Mutex
	task    *api.Task       // latest copy from the dispatcher
	status  *api.TaskStatus // the last state this runner reached
	removed bool            // dropped from assignments: remove the container
	changed chan struct{}   // signalled on update/remove

	ctx    context.Context // cancelled on detach (agent stopping)
	cancel context.CancelFunc

	// The health check, owned by run's goroutine: check is the task's
	// (nil without one), stopHealth ends its checking, and unhealthy
	// carries the verdict that fails the task.
	check      *api.HealthConfig
	stopHealth context.CancelFunc
	unhealthy  chan error
}

func newRunner(a *Agent, t *api.Task, ctrl exec.Controller) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	return &runner{
		agent:     a,
		ctrl:      ctrl,
		logger:    a.logger.With("task", t.GetId(), "service", t.GetServiceName(), "slot", t.GetSlot()),
		task:      t,
		status:    t.GetStatus(),
		changed:   make(chan struct{}, 1),
		unhealthy: make(chan error, 1),
		ctx:       ctx,
		cancel:    cancel,
	}
}

func (r *runner) update(t *api.Task) {
	r.mu.Lock()
	r.task = t
	r.mu.Unlock()
	r.poke()
}

func (r *runner) remove() {
	r.mu.Lock()
	r.removed = true
	r.mu.Unlock()
	r.poke()
}

// detach stops the runner without touching the container: the agent is
// stopping, the container keeps running and is adopted on the next start.
func (r *runner) detach() { r.cancel() }

func (r *runner) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *runner) snapshot() (desired api.TaskState, removed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.task.GetDesiredState(), r.removed
}

func (r *runner) state() api.TaskState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.GetState()
}

// setState records and reports a new state; it never moves backwards.
func (r *runner) setState(st api.TaskState, msg string, err error, mutate func(*api.TaskStatus)) {
	r.mu.Lock()
	if r.status.GetState() > st {
		r.mu.Unlock()
		return
	}
	next := &api.TaskStatus{State: st, Message: msg, Timestamp: timestamppb.Now()}
	if prev := r.status; prev != nil {
		next.StartedAt = prev.GetStartedAt()
		next.Health = prev.GetHealth()
		if prev.GetContainer() != nil {
			next.Container = proto.Clone(prev.GetContainer()).(*api.ContainerStatus)
		}
	}
	if err != nil {
		next.Err = err.Error()
	}
	if mutate != nil {
		mutate(next)
	}
	r.status = next
	// update replaces r.task from the assignments goroutine: read it
	// under the lock.
	id := r.task.GetId()
	r.mu.Unlock()
	r.logger.Debug("task state", "state", api.StateName(st), "err", err)
	r.agent.report(id, next)
}

func failed(t *api.Task, st api.TaskState, err error) *api.TaskStatus {
	return &api.TaskStatus{State: st, Err: err.Error(), Message: api.StateName(st), Timestamp: timestamppb.Now(), StartedAt: t.GetStatus().GetStartedAt()}
}

func (r *runner) run() {
	defer r.cancel()
	waitDone := make(chan error, 1)
	waiting, stopped := false, false
	for {
		desired, removed := r.snapshot()
		cur := r.state()
		switch {
		case removed || desired >= api.TaskState_TASK_STATE_SHUTDOWN:
			// A task told to stop never runs again (a restart is a new
			// task), so its container goes at once: history lives in the
			// managers' store, not in stopped containers.
			if !stopped {
				r.stop(waiting, waitDone)
				stopped, waiting = true, false
			}
			if removed {
				return
			}
		case desired == api.TaskState_TASK_STATE_RUNNING && !api.IsTerminal(cur) && !waiting:
			if err := r.start(cur); err != nil {
				if r.ctx.Err() != nil {
					return
				}
				break
			}
			waiting = true
			go func() { waitDone <- r.ctrl.Wait(r.ctx) }()
			r.watchHealth()
		}
		select {
		case <-r.ctx.Done():
			return
		case <-r.changed:
		case err := <-waitDone:
			waiting = false
			r.endHealth()
			if r.ctx.Err() != nil {
				return
			}
			r.exited(err)
		case err := <-r.unhealthy:
			if !waiting || stopped {
				break // the container ended meanwhile; that verdict is moot
			}
			// Failed first, so that every node drops its backend and the
			// orchestrator starts its replacement while it stops.
			r.setState(api.TaskState_TASK_STATE_FAILED, "failed", err, func(s *api.TaskStatus) {
				s.Health = api.TaskHealth_TASK_HEALTH_UNHEALTHY
			})
			r.stop(waiting, waitDone)
			stopped, waiting = true, false
		}
	}
}

// endHealth stops the health checks, if any run.
func (r *runner) endHealth() {
	if r.stopHealth != nil {
		r.stopHealth()
		r.stopHealth = nil
	}
}

// running reports the task RUNNING; with a health check it is STARTING
// in the same report, so no manager ever sees it running unchecked.
func (r *runner) running() {
	r.setState(api.TaskState_TASK_STATE_RUNNING, "started", nil, func(s *api.TaskStatus) {
		if s.StartedAt == nil {
			s.StartedAt = s.Timestamp
		}
		if r.check != nil && s.Health == api.TaskHealth_TASK_HEALTH_UNSPECIFIED {
			s.Health = api.TaskHealth_TASK_HEALTH_STARTING
		}
	})
}

// start takes the task from its current state to RUNNING. A task that
// already got past STARTING before (the agent restarted) is adopted: its
// container is waited on, never started twice.
func (r *runner) start(cur api.TaskState) error {
	ctx := r.ctx
	if cur >= api.TaskState_TASK_STATE_STARTING {
		return r.adopt(ctx)
	}
	r.setState(api.TaskState_TASK_STATE_ACCEPTED, "accepted", nil, nil)
	r.setState(api.TaskState_TASK_STATE_PREPARING, "preparing", nil, nil)
	if err := r.awaitImage(ctx); err != nil {
		return err
	}
	if err := r.ctrl.Prepare(ctx); err != nil && !errors.Is(err, exec.ErrTaskPrepared) {
		if ctx.Err() == nil {
			r.setState(api.TaskState_TASK_STATE_REJECTED, "rejected", err, nil)
		}
		return err
	}
	check, err := r.healthcheck(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.setState(api.TaskState_TASK_STATE_REJECTED, "rejected", err, nil)
		}
		return err
	}
	r.check = check
	r.setState(api.TaskState_TASK_STATE_STARTING, "starting", nil, nil)
	if err := r.ctrl.Start(ctx); err != nil && !errors.Is(err, exec.ErrTaskStarted) {
		if ctx.Err() == nil {
			r.setState(api.TaskState_TASK_STATE_FAILED, "failed", fmt.Errorf("start: %w", err), nil)
		}
		return err
	}
	if l, ok := r.ctrl.(exec.Listener); ok {
		if err := l.Listening(ctx, listenWait); errors.Is(err, exec.ErrExited) {
			return nil // never RUNNING: Wait reports how it ended
		}
	}
	r.running()
	return nil
}

// adopt resumes a task whose container was started by an earlier run of
// the agent. If the container is gone, the task failed while nobody
// watched: report that rather than start it again behind the managers'
// back.
func (r *runner) adopt(ctx context.Context) error {
	err := r.ctrl.Prepare(ctx)
	switch {
	case errors.Is(err, exec.ErrTaskPrepared):
	case err == nil:
		// Prepare made a fresh container: the old one had vanished.
		_ = r.ctrl.Remove(ctx)
		err := errors.New("container disappeared while the node agent was away")
		r.setState(api.TaskState_TASK_STATE_FAILED, "failed", err, nil)
		return err
	default:
		r.setState(api.TaskState_TASK_STATE_FAILED, "failed", fmt.Errorf("adopt: %w", err), nil)
		return err
	}
	check, err := r.healthcheck(ctx)
	if err != nil {
		r.setState(api.TaskState_TASK_STATE_FAILED, "failed", fmt.Errorf("adopt: %w", err), nil)
		return err
	}
	r.check = check
	if r.state() < api.TaskState_TASK_STATE_RUNNING {
		if err := r.ctrl.Start(ctx); err != nil && !errors.Is(err, exec.ErrTaskStarted) {
			r.setState(api.TaskState_TASK_STATE_FAILED, "failed", fmt.Errorf("start: %w", err), nil)
			return err
		}
		r.running()
	}
	r.logger.Info("adopted running container")
	return nil
}

func (r *runner) exited(err error) {
	desired, removed := r.snapshot()
	if removed || desired >= api.TaskState_TASK_STATE_SHUTDOWN {
		r.setState(api.TaskState_TASK_STATE_SHUTDOWN, "shutdown", nil, nil)
		return
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
		r.setState(api.TaskState_TASK_STATE_COMPLETE, "finished", nil, func(s *api.TaskStatus) {
			if s.Container == nil {
				s.Container = &api.ContainerStatus{}
			}
			s.Container.ExitCode = 0
		})
	case errors.As(err, &ee):
		r.setState(api.TaskState_TASK_STATE_FAILED, "failed", err, func(s *api.TaskStatus) {
			if s.Container == nil {
				s.Container = &api.ContainerStatus{}
			}
			s.Container.ExitCode = ee.Code
		})
	default:
		r.setState(api.TaskState_TASK_STATE_FAILED, "failed", fmt.Errorf("wait: %w", err), nil)
	}
}

// drain gives the other nodes time to take a running task out of their
// load balancers before it is stopped. The message that stops it removed
// its backend here already, and the same change reaches every node at
// about the same time; the delay covers a node that applies it a little
// later, so no new connection meets a process that is going away. A task
// its health check failed was reported FAILED before it stops, which takes
// its backend out of every node's load balancers (this one's included) on
// the way back from the managers; the delay covers that round trip too.
// Tasks without networks are nobody's backend and stop at once; running
// says whether the container's process still runs.
//
// It reports false when the agent stopped meanwhile: the task is then left
// as it is, for the next full set of assignments to settle.
func (r *runner) drain(running bool) bool {
	r.mu.Lock()
	networked := len(r.task.GetNetworks()) > 0
	r.mu.Unlock()
	delay := r.agent.cfg.DrainDelay
	if !running || delay <= 0 || !networked {
		return true
	}
	r.logger.Debug("draining before stop", "delay", delay)
	select {
	case <-time.After(delay):
		return true
	case <-r.ctx.Done():
		return false
	}
}

// stop shuts the container down and removes it. The state is SHUTDOWN
// unless the task had already ended on its own.
func (r *runner) stop(waiting bool, waitDone chan error) {
	ctx, cancel := context.WithTimeout(context.Background(), removeTimeout)
	defer cancel()
	r.endHealth()
	if !api.IsTerminal(r.state()) || waiting {
		if !r.drain(waiting) {
			return
		}
		if err := r.ctrl.Shutdown(ctx); err != nil {
			r.logger.Warn("shut down container", "err", err)
		}
		if waiting {
			select {
			case <-waitDone:
			case <-ctx.Done():
			}
		}
		r.setState(api.TaskState_TASK_STATE_SHUTDOWN, "shutdown", nil, nil)
	} else {
		// The process ended by itself and its replacement is starting
		// right now: removing the dead container (a few runc and
		// snapshotter calls) can wait a moment rather than compete with
		// that start for the CPU.
		select {
		case <-time.After(deadCleanupDelay):
		case <-r.ctx.Done():
			return // the agent stops; the next full sync removes it
		}
	}
	if err := r.ctrl.Remove(ctx); err != nil {
		r.logger.Error("remove container", "err", err)
	}
}
