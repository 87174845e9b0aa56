package dispatcher

import (
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// assignmentCoalesce lets a burst of changes (a scheduler pass placing many
// tasks) go to the worker as one delta, at the cost of this much latency.
const assignmentCoalesce = 2 * time.Millisecond

// assignmentPart bounds one message of the Assignments stream: a larger
// one (a cluster-wide network view: every ingress endpoint is ~150 bytes,
// so 4 MiB is reached at ~27,000 ingress tasks) goes in parts
// (api.SplitAssignments). A quarter of gRPC's default 4 MiB receive limit
// leaves room for any one item, and is large enough that the per-message
// cost is lost in the encoding.
const assignmentPart = 1 << 20

// assigned reports whether a task belongs in a node's assignment set: the
// scheduler has placed it there.
func assigned(t *api.Task, nodeID string) bool {
	return t.GetNodeId() == nodeID && t.GetStatus().GetState() >= api.TaskState_TASK_STATE_ASSIGNED
}

// Assignments streams a node's tasks: the full set, then a delta for every
// change. A session has one Assignments stream: a new one replaces the
// old (see claimStream). A worker that falls more than streamQueueLimit
// events behind gets a FULL message instead of the deltas it missed. Deltas carry the sequence they apply to; the stream is the only
// writer of sequences for its worker, so a worker that sees a gap (only
// possible across reconnects) asks again and gets a full set.
//
// Every message also carries the node's network view (see viewOf): whole
// in a FULL message, what changed in an INCREMENTAL one, read from the
// same version of the store as the task changes beside it. A change of
// the view alone is sent too, with no task changes.
func (d *Dispatcher) Assignments(req *api.AssignmentsRequest, stream api.Dispatcher_AssignmentsServer) error {
	ctx := stream.Context()
	s, err := d.lookup(ctx, req.GetSessionId())
	if err != nil {
		return err
	}
	stop, release := d.claimStream(s, streamAssignments)
	defer release()
	sub := d.raft.Store().SubscribeBounded(streamQueueLimit)
	defer sub.Close()
	send := func(msg *api.AssignmentsMessage) error {
		for _, part := range api.SplitAssignments(msg, assignmentPart) {
			if err := sendOrStop(ctx, stream, part, stop, s.done); err != nil {
				return err
			}
		}
		return nil
	}

	// sent holds the version of each task the worker has, to send only
	// real changes.
	sent := map[string]uint64{}
	// sentView is the network view the worker holds.
	var sentView netView
	var seq uint64
	full := func() error {
		var tasks []*api.Task
		d.raft.Store().View(func(tx store.ReadTx) {
			tasks = tx.TasksOfNode(s.nodeID)
			sentView = viewOf(tx, s.nodeID)
		})
		msg := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL, Network: sentView.delta(netView{})}
		sent = map[string]uint64{}
		for _, t := range tasks {
			if assigned(t, s.nodeID) {
				msg.Changes = append(msg.Changes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
				sent[t.GetId()] = t.GetMeta().GetVersion()
			}
		}
		seq++
		msg.ResultsIn = seq
		return send(msg)
	}
	if err := full(); err != nil {
		return streamEnd(err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-stop:
			return errStreamReplaced
		case <-sub.Ready():
		}
		changes := sub.Next()
		if len(changes) == 0 {
			continue
		}
		timer := time.NewTimer(assignmentCoalesce)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		changes = append(changes, sub.Next()...)

		reset := false
		net := newNetChanges()
		touched := map[string]bool{}
		for _, c := range changes {
			if c.Reset {
				reset = true
				break
			}
			for _, ev := range c.Events {
				if t, ok := ev.Object.(*api.Task); ok {
					if t.GetNodeId() == s.nodeID || sent[t.GetId()] != 0 {
						touched[t.GetId()] = true
					}
				}
				net.note(ev, s.nodeID)
			}
		}
		if reset {
			if err := full(); err != nil {
				return streamEnd(err)
			}
			continue
		}
		if len(touched) == 0 && net.empty() {
			continue
		}
		msg := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_INCREMENTAL, AppliesTo: seq, Network: &api.NetworkDelta{}}
		d.raft.Store().View(func(tx store.ReadTx) {
			if !net.empty() {
				msg.Network = sentView.update(tx, s.nodeID, net)
			}
			for id := range touched {
				t := tx.Task(id)
				_, had := sent[id]
				switch {
				case t != nil && assigned(t, s.nodeID):
					if had && sent[id] == t.GetMeta().GetVersion() {
						continue
					}
					// Status reports from the worker itself come back here;
					// send them too, since the desired state may have changed
					// in the same version.
					sent[id] = t.GetMeta().GetVersion()
					msg.Changes = append(msg.Changes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
				case had:
					delete(sent, id)
					msg.Changes = append(msg.Changes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_REMOVE, Task: &api.Task{Id: id}})
				}
			}
		})
		if len(msg.Changes) == 0 && emptyDelta(msg.GetNetwork()) {
			continue
		}
		seq++
		msg.ResultsIn = seq
		if err := send(msg); err != nil {
			return streamEnd(err)
		}
	}
}
