package dispatcher

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Stream kinds: a session holds at most one stream of each.
const (
	streamAssignments = "assignments"
	streamImages      = "images"
)

// streamQueueLimit bounds how many store events a stream's subscription
// queues for a worker that does not keep up (it stopped reading, or its
// link is slow). Past it the queue collapses into one reset and the worker
// gets a FULL message when it reads again: the leader holds at most this
// many events per stream, whatever the worker does. 4096 events cover a
// scheduler pass of a few thousand tasks, so a worker that keeps up never
// resynchronises.
const streamQueueLimit = 4096

// errStreamReplaced ends a stream that a newer one of the same kind and
// session replaced.
var errStreamReplaced = status.Error(codes.Aborted, "a newer stream of the same kind replaced this one on the session")

// claimStream makes the caller the session's one stream of kind. An older
// stream of that kind is told to end (its stop channel closes): a worker
// reopens a stream on the same session after an error, and the server may
// not have seen the old one go yet, so refusing the new one would fail a
// well-behaved worker; replacing it keeps one live stream per kind
// whatever a worker opens. The returned release must be called when the
// stream ends.
func (d *Dispatcher) claimStream(s *session, kind string) (stop <-chan struct{}, release func()) {
	ch := make(chan struct{})
	d.mu.Lock()
	if s.streams == nil {
		s.streams = map[string]chan struct{}{}
	}
	if old := s.streams[kind]; old != nil {
		close(old)
	}
	s.streams[kind] = ch
	d.mu.Unlock()
	return ch, func() {
		d.mu.Lock()
		if s.streams[kind] == ch {
			delete(s.streams, kind)
		}
		d.mu.Unlock()
	}
}

// sendOrStop sends msg, giving up when the stream is replaced, the session
// ends or the call ends. A worker that stops reading leaves a Send blocked
// on flow control; returning from the handler makes gRPC close the
// stream, which unblocks the Send, so a replaced or ended stream never
// keeps a goroutine and its message on the leader.
func sendOrStop(ctx context.Context, stream grpc.ServerStream, msg any, stop, done <-chan struct{}) error {
	errc := make(chan error, 1)
	go func() { errc <- stream.SendMsg(msg) }()
	select {
	case err := <-errc:
		return err
	case <-stop:
		return errStreamReplaced
	case <-done:
		return errSessionEnded
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errSessionEnded = status.Error(codes.Aborted, "session ended: open a new one")

// streamEnd is what a handler returns when its stream ends: nothing when
// the worker went away or its session ended, the reason otherwise.
func streamEnd(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, errSessionEnded) {
		return nil
	}
	return err
}
