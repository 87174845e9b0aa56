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
	"github.com/shoal-project/shoal/seal"
)

// persistDelay coalesces bursts of assignment changes into one write.
const persistDelay = 100 * time.Millisecond

// assignmentsAD binds the sealed file to what it holds, so that a value
// sealed for another purpose under the same key does not open as it.
var assignmentsAD = []byte("shoal/worker/assignments")

// The saved assignments are a cache: the managers send the full set again
// with every session. They hold the tasks' specs, environment values
// included, so they are sealed (package seal) under Config.CacheKey. A
// file that does not open (the node's key was renewed while shoald was
// down, the file is damaged) is ignored, without its contents in the log,
// and replaced at the next save; the agent then waits for the managers'
// set, as on a first start. A plaintext file left by an older shoald is
// read once and replaced by a sealed one at once.

func (a *Agent) assignmentsFile() string {
	return filepath.Join(a.cfg.StateDir, "assignments.pb")
}

func (a *Agent) markDirty() {
	select {
	case a.dirty <- struct{}{}:
	default:
	}
}

// SetCacheKey replaces the key that seals the saved assignments (the
// node's key was renewed) and saves them again under it.
func (a *Agent) SetCacheKey(key []byte) {
	if len(key) != seal.KeySize {
		panic(fmt.Sprintf("worker: a CacheKey is %d bytes, got %d", seal.KeySize, len(key)))
	}
	a.mu.Lock()
	a.cacheKey = key
	a.mu.Unlock()
	if a.cfg.StateDir != "" {
		a.markDirty()
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
// sealed, atomically.
func (a *Agent) saveAssignments() error {
	msg := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL}
	a.mu.Lock()
	key := a.cacheKey
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
		return fmt.Errorf("encode assignments: %w", err)
	}
	sealed := seal.New(key).Seal(b, assignmentsAD)
	if err := os.MkdirAll(a.cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("save assignments: %w", err)
	}
	tmp := a.assignmentsFile() + ".tmp"
	if err := os.WriteFile(tmp, sealed, 0o600); err != nil {
		return fmt.Errorf("save assignments: %w", err)
	}
	if err := os.Rename(tmp, a.assignmentsFile()); err != nil {
		return fmt.Errorf("save assignments: %w", err)
	}
	return nil
}

// loadAssignments reads the saved set: nil when there is none. plaintext
// says it was written by a shoald from before the cache was sealed.
func (a *Agent) loadAssignments() (msg *api.AssignmentsMessage, plaintext bool, err error) {
	b, err := os.ReadFile(a.assignmentsFile())
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if seal.LooksSealed(b) {
		a.mu.Lock()
		key := a.cacheKey
		a.mu.Unlock()
		if b, err = seal.New(key).Open(b, assignmentsAD); err != nil {
			return nil, false, fmt.Errorf("open: %w (the node's key changes with every certificate renewal)", err)
		}
	} else {
		plaintext = true
	}
	msg = &api.AssignmentsMessage{}
	if err := proto.Unmarshal(b, msg); err != nil {
		// proto's errors name the wire format's fault, not the contents.
		return nil, false, fmt.Errorf("decode: %w", err)
	}
	return msg, plaintext, nil
}

// restoreAssignments starts watching the tasks of the last known set. It
// removes nothing: only a full set from a manager says what is no longer
// ours.
func (a *Agent) restoreAssignments() {
	// A save cut short by a crash; an older shoald's may be plaintext.
	if err := os.Remove(a.assignmentsFile() + ".tmp"); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.logger.Warn("remove a partly saved assignments file", "err", err)
	}
	msg, plaintext, err := a.loadAssignments()
	if err != nil {
		a.logger.Warn("ignoring the saved assignments: waiting for the managers' set", "file", a.assignmentsFile(), "err", err)
		return
	}
	if msg == nil {
		return
	}
	for _, c := range msg.GetChanges() {
		a.applyChange(c)
	}
	a.logger.Info("watching saved assignments until a manager answers", "tasks", len(msg.GetChanges()))
	if plaintext {
		// Seal them now rather than at the next change.
		if err := a.saveAssignments(); err != nil {
			a.logger.Warn("seal assignments saved in the clear by an older shoald", "err", err)
			return
		}
		a.logger.Info("sealed the assignments an older shoald saved in the clear", "file", a.assignmentsFile())
	}
}
