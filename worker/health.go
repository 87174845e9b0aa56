package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// errUnhealthy starts the error of a task its health check failed: the
// orchestrator replaces it as any failed task, and `service ps` shows why.
var errUnhealthy = errors.New("unhealthy container")

// healthTracker is Docker's bookkeeping of one task's health. A task
// starts STARTING; a passed check makes it HEALTHY at once; retries
// failures in a row make it UNHEALTHY, except that failures while it is
// still STARTING within its start period do not count.
type healthTracker struct {
	retries     int
	startPeriod time.Duration
	// startedAt is when the container started; the start period runs
	// from it.
	startedAt time.Time
	health    api.TaskHealth
	// failing counts the failures in a row that counted.
	failing int
}

func newHealthTracker(hc *api.HealthConfig, startedAt time.Time, health api.TaskHealth) *healthTracker {
	if health == api.TaskHealth_TASK_HEALTH_UNSPECIFIED {
		health = api.TaskHealth_TASK_HEALTH_STARTING
	}
	return &healthTracker{
		retries:     max(int(hc.GetRetries()), 1),
		startPeriod: hc.GetStartPeriod().AsDuration(),
		startedAt:   startedAt,
		health:      health,
	}
}

// record takes the result of a check that started at at, and returns the
// task's health after it.
func (h *healthTracker) record(at time.Time, passed bool) api.TaskHealth {
	switch {
	case passed:
		h.failing = 0
		h.health = api.TaskHealth_TASK_HEALTH_HEALTHY
	case h.health == api.TaskHealth_TASK_HEALTH_STARTING && at.Sub(h.startedAt) < h.startPeriod:
		// The task is given its start period to come up.
	default:
		h.failing++
		if h.failing >= h.retries {
			h.health = api.TaskHealth_TASK_HEALTH_UNHEALTHY
		}
	}
	return h.health
}

// healthcheck finds the task's health check, when its controller can run
// one; nil when there is none.
func (r *runner) healthcheck(ctx context.Context) (check *api.HealthConfig, err error) {
	p, ok := r.ctrl.(exec.Prober)
	if !ok {
		return nil, nil
	}
	err = r.retry(ctx, "health check", func(ctx context.Context) error {
		hc, err := p.Healthcheck(ctx)
		if err == nil {
			check = hc
		}
		return err
	})
	return check, err
}

// watchHealth starts checking the task's health, if it has a check, in a
// goroutine that stopHealth (or the runner's end) stops. Called by run
// once the container runs.
func (r *runner) watchHealth() {
	if r.check == nil {
		return
	}
	r.mu.Lock()
	startedAt := r.status.GetStartedAt().AsTime()
	if r.status.GetStartedAt() == nil {
		startedAt = time.Now()
	}
	tr := newHealthTracker(r.check, startedAt, r.status.GetHealth())
	r.mu.Unlock()
	r.setHealth(tr.health)
	ctx, cancel := context.WithCancel(r.ctx)
	r.stopHealth = cancel
	r.agent.wg.Add(1)
	go func() {
		defer r.agent.wg.Done()
		r.checkHealth(ctx, r.ctrl.(exec.Prober), r.check, tr)
	}()
}

// checkHealth runs the task's check every interval until ctx ends or the
// task is unhealthy, reports each change of its health, and hands an
// unhealthy verdict to run, which fails the task. As in Docker, the first
// check comes one interval after the start, and the interval runs from
// the end of one check to the start of the next.
func (r *runner) checkHealth(ctx context.Context, p exec.Prober, hc *api.HealthConfig, tr *healthTracker) {
	interval := hc.GetInterval().AsDuration()
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		at := time.Now()
		err := p.Probe(ctx, hc)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, exec.ErrRuntimeUnavailable) {
			// No verdict: the check could not run. The task keeps its
			// health until the runtime answers again.
			r.logger.Debug("health check skipped: container runtime unreachable", "err", err)
			timer.Reset(interval)
			continue
		}
		before := tr.health
		after := tr.record(at, err == nil)
		if err != nil {
			r.logger.Debug("health check failed", "err", err, "failing", tr.failing, "retries", tr.retries, "health", api.HealthName(after))
		}
		if after == api.TaskHealth_TASK_HEALTH_UNHEALTHY {
			r.logger.Info("task is unhealthy", "failures", tr.failing, "err", err)
			select {
			case r.unhealthy <- fmt.Errorf("%w: %w", errUnhealthy, err):
			default:
			}
			return
		}
		if after != before {
			r.logger.Info("task health", "health", api.HealthName(after))
			r.setHealth(after)
		}
		timer.Reset(interval)
	}
}

// setHealth reports a change of health of the running task. The state,
// its message and its time stay: health qualifies RUNNING.
func (r *runner) setHealth(h api.TaskHealth) {
	r.mu.Lock()
	if r.status.GetState() != api.TaskState_TASK_STATE_RUNNING || r.status.GetHealth() == h {
		r.mu.Unlock()
		return
	}
	next := proto.Clone(r.status).(*api.TaskStatus)
	next.Health = h
	r.status = next
	id := r.task.GetId()
	r.mu.Unlock()
	r.agent.report(id, next)
}
