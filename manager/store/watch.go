package store

import (
	"sync"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Event is one applied action.
type Event struct {
	Kind api.StoreActionKind
	// Object is the object after the action (before it, for REMOVE).
	Object proto.Message
	// Old is the object before an UPDATE.
	Old proto.Message
}

// Change is one applied raft command.
type Change struct {
	Index  uint64
	Events []Event
	// Reset is set when the store was replaced from a snapshot: everything
	// may have changed.
	Reset bool
}

// Affects reports whether changes may concern what match picks out: a
// store reset may concern anything.
func Affects(changes []Change, match func(Event) bool) bool {
	for _, c := range changes {
		if c.Reset {
			return true
		}
		for _, ev := range c.Events {
			if match(ev) {
				return true
			}
		}
	}
	return false
}

// IsImage matches events on images.
func IsImage(ev Event) bool {
	_, ok := ev.Object.(*api.Image)
	return ok
}

// Subscription receives every Change from the moment it was made. A slow
// reader never blocks raft: changes queue until it takes them. Without a
// limit (Subscribe) the queue has no bound, which suits the leader's own
// controllers, which keep up. A feed that serves a remote peer
// (SubscribeBounded) must not let that peer decide how much the leader
// holds: past its limit the queue is dropped for one Reset change, and the
// reader resynchronises from the store as after a snapshot restore.
type Subscription struct {
	store  *Store
	mu     sync.Mutex
	queue  []Change
	events int // events queued, counted against limit
	limit  int // 0: unbounded
	notify chan struct{}
	closed bool
}

// Subscribe starts a change feed without a bound. Close it when done.
func (s *Store) Subscribe() *Subscription {
	return s.SubscribeBounded(0)
}

// SubscribeBounded starts a change feed that queues at most limit events
// (0: no bound). When a reader falls further behind, what it missed is
// replaced by a single Change with Reset set, so the queue never holds
// more than limit events plus one change.
func (s *Store) SubscribeBounded(limit int) *Subscription {
	sub := &Subscription{store: s, notify: make(chan struct{}, 1), limit: limit}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

// Ready is signalled when changes are waiting; call Next to take them.
func (sub *Subscription) Ready() <-chan struct{} { return sub.notify }

// Next takes all queued changes.
func (sub *Subscription) Next() []Change {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	q := sub.queue
	sub.queue = nil
	sub.events = 0
	return q
}

// Close ends the feed.
func (sub *Subscription) Close() {
	sub.store.mu.Lock()
	delete(sub.store.subs, sub)
	sub.store.mu.Unlock()
	sub.mu.Lock()
	sub.closed = true
	sub.queue = nil
	sub.mu.Unlock()
}

func (s *Store) publish(c Change) {
	s.mu.Lock()
	subs := make([]*Subscription, 0, len(s.subs))
	for sub := range s.subs {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	for _, sub := range subs {
		sub.mu.Lock()
		if !sub.closed {
			sub.enqueueLocked(c)
		}
		sub.mu.Unlock()
		select {
		case sub.notify <- struct{}{}:
		default:
		}
	}
}

// enqueueLocked queues c, or collapses the queue into one Reset when the
// subscription's limit would be passed (or already was).
func (sub *Subscription) enqueueLocked(c Change) {
	if sub.limit <= 0 {
		sub.queue = append(sub.queue, c)
		return
	}
	if len(sub.queue) == 1 && sub.queue[0].Reset && sub.events == 0 {
		sub.queue[0].Index = max(sub.queue[0].Index, c.Index)
		return
	}
	if c.Reset || sub.events+len(c.Events) > sub.limit {
		sub.queue = append(sub.queue[:0:0], Change{Index: c.Index, Reset: true})
		sub.events = 0
		return
	}
	sub.queue = append(sub.queue, c)
	sub.events += len(c.Events)
}
