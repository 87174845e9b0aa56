package worker

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/worker/exec"
)

// TestAgentRestoresAssignments: a restarted agent watches the tasks it had
// before any manager answers, and adopts them rather than starting them.
func TestAgentRestoresAssignments(t *testing.T) {
	dir := t.TempDir()
	withState := func(c *Config) { c.StateDir = dir }

	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher(), withState)
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	h.disp.waitState(t, "t1", stRunning)
	await.For(t, "assignments saved", func() (bool, string) {
		_, err := os.Stat(filepath.Join(dir, "assignments.pb"))
		return err == nil, "no file"
	})
	h.stop()

	// The second agent's dispatcher never sends a set: what it watches
	// comes from disk.
	exe2 := newFakeExecutor()
	exe2.prepareErr["t1"] = exec.ErrTaskPrepared // its container exists
	startAgent(t, exe2, newFakeDispatcher(), withState)
	await.For(t, "restored task watched", func() (bool, string) {
		v := exe2.verbs("t1")
		return slices.Contains(v, "wait"), "verbs: " + strings.Join(v, " ")
	})
	if slices.Contains(exe2.verbs("t1"), "start") {
		t.Fatalf("restored running task was started again: %v", exe2.verbs("t1"))
	}
}
