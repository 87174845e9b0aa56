package manager

import (
	"context"
	"time"

	"github.com/shoal-project/shoal/manager/store"
)

// retryDelay is the pause before a controller retries a failed write.
const retryDelay = 50 * time.Millisecond

// controller is one of the leader's loops over the store (orchestrator,
// allocator, scheduler, roles): it works in passes, and between passes
// waits for a change it cares about or for the time it asked to be woken.
// watch runs it; a controller only says what a pass does and which
// changes call for one.
type controller interface {
	// pass does what is due and returns when to run again if no relevant
	// change comes first (zero: only on a change). It returns early when
	// ctx ends.
	pass(ctx context.Context) (wake time.Time)
	// changed takes the store's changes since it was last called and
	// reports whether they call for a pass. A Change with Reset means
	// anything may have changed.
	changed(changes []store.Change) bool
}

// watch runs c until ctx ends.
func (m *Manager) watch(ctx context.Context, c controller) {
	sub := m.raft.Store().Subscribe()
	defer sub.Close()
	// Subscribed first, then everything counts as changed: no change made
	// in between is missed.
	c.changed([]store.Change{{Reset: true}})
	for {
		wake := c.pass(ctx)
		for {
			if !wait(ctx, sub, wake) {
				return
			}
			relevant := c.changed(sub.Next())
			if relevant || (!wake.IsZero() && !time.Now().Before(wake)) {
				break
			}
		}
	}
}

// wait blocks until the subscription has changes, the wake time comes, or
// ctx ends (false).
func wait(ctx context.Context, sub *store.Subscription, wake time.Time) bool {
	var timer <-chan time.Time
	if !wake.IsZero() {
		t := time.NewTimer(time.Until(wake))
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-sub.Ready():
	case <-timer:
	}
	return true
}

// eachEvent calls reset for a change that replaced the whole store and
// event for each event of the others, in order.
func eachEvent(changes []store.Change, reset func(), event func(store.Event)) {
	for _, ch := range changes {
		if ch.Reset {
			reset()
			continue
		}
		for _, ev := range ch.Events {
			event(ev)
		}
	}
}

// earliest is the first of times, or zero when there is none.
func earliest(times map[string]time.Time) time.Time {
	var first time.Time
	for _, at := range times {
		if first.IsZero() || at.Before(first) {
			first = at
		}
	}
	return first
}
