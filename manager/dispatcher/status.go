package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// Bounds on what a worker's status report may cost the cluster. Every
// recorded report is a raft entry on every manager and stays in the store
// (and each snapshot) for as long as the task is kept, so none of it is
// left to the worker.
const (
	// MaxStatusMessage and MaxStatusErr cap a report's message and err.
	// A longer one is cut, with a marker saying how much was cut: the
	// state change is what the cluster acts on, and refusing the report
	// would leave a failed task looking as it was (never replaced); the
	// start of the reason is what an operator reads. 8 KiB holds a health
	// check's whole output (the node keeps 4 KiB of it) with its prefix.
	MaxStatusMessage = 1 << 10
	MaxStatusErr     = 8 << 10
	// maxIDLen bounds task and container ids (ours are 26 characters,
	// containerd's 64).
	maxIDLen = 128

	// statusCoalesce is how long a report waits for others to share its
	// raft entry. The reports of every worker that arrive within it are
	// written as one entry (one per statusEntryMax tasks), holding only
	// the newest state of each task: status writes cost at most
	// 1/statusCoalesce entries a second whatever the workers send. A task
	// reaching RUNNING 50 ms later is nothing against its start.
	statusCoalesce = 50 * time.Millisecond
	// statusEntryMax bounds the tasks in one raft entry, keeping entries
	// (and the time to apply one) small.
	statusEntryMax = 512
	// statusFlushTimeout bounds a coalesced write, which outlives the call
	// that started it (the others wait on it).
	statusFlushTimeout = 10 * time.Second

	// statusRate and statusBurst limit a session's UpdateTaskStatus
	// calls. A well-behaved worker has one call in flight and each waits
	// for its write (statusCoalesce), so it makes at most 20 a second;
	// the margin covers retries. Past the limit calls are refused with
	// ResourceExhausted and the worker retries with its newer reports.
	statusRate  = 50 // per second
	statusBurst = 100
)

// truncateMarker ends a cut field; %d is the number of bytes cut.
const truncateMarker = " …[%d bytes cut by the manager]"

// truncate cuts s to at most limit bytes, marker included, at a rune
// boundary.
func truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	keep := limit - len(fmt.Sprintf(truncateMarker, len(s)))
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	keep = max(keep, 0)
	return s[:keep] + fmt.Sprintf(truncateMarker, len(s)-keep)
}

// reportable reports whether a worker may report state: the states a
// node moves its tasks through. The steps up to ASSIGNED and ORPHANED are
// the managers', REMOVE is only ever desired, and anything else is not a
// state at all.
func reportable(s api.TaskState) bool {
	return s >= api.TaskState_TASK_STATE_ACCEPTED && s <= api.TaskState_TASK_STATE_REJECTED
}

// checkReport validates one update and returns the status to record:
// refused when it cannot be a report of a node (the whole call is refused,
// nothing is written), with message and err cut to their bounds.
func checkReport(u *api.TaskStatusUpdate) (*api.TaskStatus, error) {
	id := u.GetTaskId()
	if id == "" || len(id) > maxIDLen {
		return nil, fmt.Errorf("task_id %q: want a task id of 1 to %d bytes", truncate(id, 64), maxIDLen)
	}
	st := u.GetStatus()
	if st == nil {
		return nil, fmt.Errorf("task %s: status is missing", id)
	}
	if !reportable(st.GetState()) {
		name, known := api.TaskState_name[int32(st.GetState())]
		if !known {
			return nil, fmt.Errorf("task %s: state %d is not a task state", id, int32(st.GetState()))
		}
		return nil, fmt.Errorf("task %s: a node may not report %s (only ACCEPTED to REJECTED)", id, name)
	}
	if _, known := api.TaskHealth_name[int32(st.GetHealth())]; !known {
		return nil, fmt.Errorf("task %s: health %d is not a health state", id, int32(st.GetHealth()))
	}
	if c := st.GetContainer().GetContainerId(); len(c) > maxIDLen {
		return nil, fmt.Errorf("task %s: container_id is %d bytes, at most %d", id, len(c), maxIDLen)
	}
	for name, ts := range map[string]*timestamppb.Timestamp{"timestamp": st.GetTimestamp(), "started_at": st.GetStartedAt()} {
		if ts != nil {
			if err := ts.CheckValid(); err != nil {
				return nil, fmt.Errorf("task %s: %s: %w", id, name, err)
			}
		}
	}
	if len(st.GetMessage()) <= MaxStatusMessage && len(st.GetErr()) <= MaxStatusErr {
		return st, nil
	}
	st = proto.Clone(st).(*api.TaskStatus)
	st.Message = truncate(st.Message, MaxStatusMessage)
	st.Err = truncate(st.Err, MaxStatusErr)
	return st, nil
}

// advances reports whether a node's report moves stored forward: task
// state only moves forward, a final state is final, and a report equal to
// the stored one changes nothing. A report of the same state with other
// details (a change of health in RUNNING) advances.
func advances(stored, report *api.TaskStatus) bool {
	if api.IsTerminal(stored.GetState()) || report.GetState() < stored.GetState() {
		return false
	}
	return !proto.Equal(stored, report)
}

// limiter is a token bucket: rate tokens a second, at most burst saved
// (statusRate and statusBurst when zero).
type limiter struct {
	rate, burst float64
	mu          sync.Mutex
	tokens      float64
	last        time.Time
}

// allow takes a token if one is left.
func (l *limiter) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.rate == 0 {
		l.rate, l.burst = statusRate, statusBurst
	}
	if l.last.IsZero() {
		l.tokens = l.burst
	} else {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// statusBatch is the reports waiting to share one write.
type statusBatch struct {
	reports map[string]pendingReport // by task id
	done    chan struct{}            // closed once written (or not)
	err     error
}

type pendingReport struct {
	nodeID string
	status *api.TaskStatus
}

// UpdateTaskStatus records task states reported by a worker. A call is
// refused whole (nothing is written) when it names another node's task
// (PermissionDenied), carries what no node may report (InvalidArgument) or
// comes faster than statusRate (ResourceExhausted). Reports that would
// move a task backwards or out of a final state are ignored, since task
// state only moves forward. Accepted reports are written together with
// those of other calls (statusCoalesce); the call returns once they are.
func (d *Dispatcher) UpdateTaskStatus(ctx context.Context, req *api.UpdateTaskStatusRequest) (*api.UpdateTaskStatusResponse, error) {
	s, err := d.lookup(ctx, req.GetSessionId())
	if err != nil {
		return nil, err
	}
	if !s.reports.allow(time.Now()) {
		return nil, status.Errorf(codes.ResourceExhausted, "node %s sends status reports faster than %d a second: send fewer, each with the newest state of every task", s.nodeID, statusRate)
	}
	if n := len(req.GetUpdates()); n > api.MaxStatusUpdates {
		return nil, status.Errorf(codes.InvalidArgument, "updates: %d in one call, at most %d: split them", n, api.MaxStatusUpdates)
	}
	reports := map[string]*api.TaskStatus{}
	for _, u := range req.GetUpdates() {
		st, err := checkReport(u)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		if prev := reports[u.GetTaskId()]; prev == nil || st.GetState() >= prev.GetState() {
			reports[u.GetTaskId()] = st
		}
	}
	var denied error
	d.raft.Store().View(func(tx store.ReadTx) {
		for id, st := range reports {
			t := tx.Task(id)
			if t == nil {
				delete(reports, id) // removed meanwhile; nothing to record
				continue
			}
			if t.GetNodeId() != s.nodeID {
				denied = status.Errorf(codes.PermissionDenied, "task %s is not assigned to node %s", id, s.nodeID)
				return
			}
			if !advances(t.GetStatus(), st) {
				delete(reports, id)
			}
		}
	})
	if denied != nil {
		return nil, denied
	}
	if len(reports) == 0 {
		return &api.UpdateTaskStatusResponse{}, nil
	}
	if err := d.recordStatus(ctx, s.nodeID, reports); err != nil {
		return nil, err
	}
	return &api.UpdateTaskStatusResponse{}, nil
}

// recordStatus adds reports to the batch being gathered and waits until it
// is written. The call that opens a batch waits statusCoalesce, then
// writes it for everyone.
func (d *Dispatcher) recordStatus(ctx context.Context, nodeID string, reports map[string]*api.TaskStatus) error {
	d.batchMu.Lock()
	b := d.batch
	first := b == nil
	if first {
		b = &statusBatch{reports: map[string]pendingReport{}, done: make(chan struct{})}
		d.batch = b
	}
	for id, st := range reports {
		if prev, ok := b.reports[id]; !ok || st.GetState() >= prev.status.GetState() {
			b.reports[id] = pendingReport{nodeID: nodeID, status: st}
		}
	}
	d.batchMu.Unlock()
	if first {
		// The write is everyone's: it must not end with this call.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), statusCoalesce+statusFlushTimeout)
		defer cancel()
		select {
		case <-time.After(statusCoalesce):
		case <-wctx.Done():
		}
		d.batchMu.Lock()
		d.batch = nil
		d.batchMu.Unlock()
		b.err = d.writeStatus(wctx, b.reports)
		close(b.done)
	}
	select {
	case <-b.done:
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
	if b.err != nil {
		return status.Errorf(codes.Unavailable, "record task status: %v", b.err)
	}
	return nil
}

// writeStatus writes a batch, statusEntryMax tasks an entry, against the
// store as it is now: a task that moved to another node meanwhile, or
// whose state went past the report, is left alone.
func (d *Dispatcher) writeStatus(ctx context.Context, reports map[string]pendingReport) error {
	for i := 0; ; i++ {
		var actions []*api.StoreAction
		d.raft.Store().View(func(tx store.ReadTx) {
			for id, r := range reports {
				t := tx.Task(id)
				if t == nil || t.GetNodeId() != r.nodeID || !advances(t.GetStatus(), r.status) {
					continue
				}
				upd := proto.Clone(t).(*api.Task)
				upd.Status = r.status
				upd.Meta.UpdatedAt = timestamppb.Now()
				actions = append(actions, store.Update(upd))
			}
		})
		var err error
		for len(actions) > 0 && err == nil {
			n := min(len(actions), statusEntryMax)
			err = d.raft.Propose(ctx, actions[:n]...)
			actions = actions[n:]
		}
		if err == nil || !errors.Is(err, store.ErrSequenceConflict) || i >= statusRetries {
			return err
		}
	}
}
