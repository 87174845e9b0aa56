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

// Subscription receives every Change from the moment it was made. Changes
// are queued without bound, so a slow reader never blocks raft; readers are
// the leader's own controllers, which keep up.
type Subscription struct {
	store  *Store
	mu     sync.Mutex
	queue  []Change
	notify chan struct{}
	closed bool
}

// Subscribe starts a change feed. Close it when done.
func (s *Store) Subscribe() *Subscription {
	sub := &Subscription{store: s, notify: make(chan struct{}, 1)}
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
			sub.queue = append(sub.queue, c)
		}
		sub.mu.Unlock()
		select {
		case sub.notify <- struct{}{}:
		default:
		}
	}
}
