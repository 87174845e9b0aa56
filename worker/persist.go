package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// persistDelay coalesces bursts of assignment changes into one write.
const persistDelay = 100 * time.Millisecond

func (a *Agent) assignmentsFile() string {
	return filepath.Join(a.cfg.StateDir, "assignments.pb")
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// persistLoop writes the assignments after changes, until ctx ends.
func (a *Agent) persistLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.dirty:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(persistDelay):
		}
		if err := a.saveAssignments(); err != nil {
			a.logger.Warn("persist assignments", "err", err)
		}
	}
}

// saveAssignments writes the current set as a FULL assignments message,
// atomically.
func (a *Agent) saveAssignments() error {
	msg := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL}
	a.mu.Lock()
	for _, r := range a.tasks {
		r.mu.Lock()
		// The state this node reached, not the managers' older copy: on
		// restore a running task is adopted, not started again.
		t := proto.Clone(r.task).(*api.Task)
		if r.status.GetState() > t.GetStatus().GetState() {
			t.Status = r.status
		}
		r.mu.Unlock()
		msg.Changes = append(msg.Changes, &api.AssignmentChange{Action: api.AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: t})
	}
	a.mu.Unlock()
	b, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return err
	}
	tmp := a.assignmentsFile() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, a.assignmentsFile())
}

// restoreAssignments starts watching the tasks of the last known set. It
// removes nothing: only a full set from a manager says what is no longer
// ours.
func (a *Agent) restoreAssignments() {
	b, err := os.ReadFile(a.assignmentsFile())
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var msg api.AssignmentsMessage
	if err == nil {
		err = proto.Unmarshal(b, &msg)
	}
	if err != nil {
		a.logger.Warn("ignoring unreadable saved assignments", "file", a.assignmentsFile(), "err", fmt.Errorf("%w", err))
		return
	}
	for _, c := range msg.GetChanges() {
		a.applyChange(c)
	}
	a.logger.Info("watching saved assignments until a manager answers", "tasks", len(msg.GetChanges()))
}
