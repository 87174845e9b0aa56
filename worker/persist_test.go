package worker

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/seal"
	"github.com/shoal-project/shoal/worker/exec"
)

// envMarker stands for a secret in a task's environment: it must never be
// found in the saved file, or in the agent's log.
const envMarker = "S3CRET-MARKER-2f9c1d"

// withState keeps the agent's assignments in dir, sealed with key.
func withState(dir string, key []byte) func(*Config) {
	return func(c *Config) { c.StateDir, c.CacheKey = dir, key }
}

// withSecretEnv gives t an environment value holding envMarker.
func withSecretEnv(t *api.Task) *api.Task {
	t.Spec.Container.Env = []string{"PASSWORD=" + envMarker}
	return t
}

// savedFile is the agent's assignments file in dir.
func savedFile(dir string) string { return filepath.Join(dir, "assignments.pb") }

// openSaved reads the saved assignments with key: the set, or why not.
func openSaved(dir string, key []byte) (*api.AssignmentsMessage, error) {
	b, err := os.ReadFile(savedFile(dir))
	if err != nil {
		return nil, err
	}
	plain, err := seal.New(key).Open(b, assignmentsAD)
	if err != nil {
		return nil, err
	}
	msg := &api.AssignmentsMessage{}
	return msg, proto.Unmarshal(plain, msg)
}

// writeSaved writes msg as an agent's saved assignments, sealed with key,
// or in the clear (as an older shoald did) when key is nil.
func writeSaved(t *testing.T, dir string, key []byte, msg *api.AssignmentsMessage) {
	t.Helper()
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	if key != nil {
		b = seal.New(key).Seal(b, assignmentsAD)
	}
	if err := os.WriteFile(savedFile(dir), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// savedTaskIDs are the task ids in a saved set.
func savedTaskIDs(msg *api.AssignmentsMessage) []string {
	var ids []string
	for _, c := range msg.GetChanges() {
		ids = append(ids, c.GetTask().GetId())
	}
	slices.Sort(ids)
	return ids
}

// logBuffer collects an agent's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func withLog(l *logBuffer) func(*Config) {
	return func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(l, nil)) }
}

// TestAgentRestoresAssignments: a restarted agent watches the tasks it had
// before any manager answers, and adopts them rather than starting them.
func TestAgentRestoresAssignments(t *testing.T) {
	dir, key := t.TempDir(), seal.NewKey()

	exe := newFakeExecutor()
	h := startAgent(t, exe, newFakeDispatcher(), withState(dir, key))
	h.disp.full(t, 1, task("t1", stAssigned, stRunning))
	h.disp.waitState(t, "t1", stRunning)
	await.For(t, "assignments saved", func() (bool, string) {
		_, err := os.Stat(savedFile(dir))
		return err == nil, "no file"
	})
	h.stop()

	// The second agent's dispatcher never sends a set: what it watches
	// comes from disk.
	exe2 := newFakeExecutor()
	exe2.prepareErr["t1"] = exec.ErrTaskPrepared // its container exists
	startAgent(t, exe2, newFakeDispatcher(), withState(dir, key))
	await.For(t, "restored task watched", func() (bool, string) {
		v := exe2.verbs("t1")
		return slices.Contains(v, "wait"), "verbs: " + strings.Join(v, " ")
	})
	if slices.Contains(exe2.verbs("t1"), "start") {
		t.Fatalf("restored running task was started again: %v", exe2.verbs("t1"))
	}
}

// TestSavedAssignmentsSealed: the saved file holds the tasks' specs,
// environment included, yet none of its bytes in the clear; and after a
// key change (a node key renewal) it is saved again under the new key.
func TestSavedAssignmentsSealed(t *testing.T) {
	dir, key := t.TempDir(), seal.NewKey()
	logs := &logBuffer{}
	h := startAgent(t, newFakeExecutor(), newFakeDispatcher(), withState(dir, key), withLog(logs))
	h.disp.full(t, 1, withSecretEnv(task("t1", stAssigned, stRunning)))
	h.disp.waitState(t, "t1", stRunning)
	// The first save follows the task's assignment: it holds the task.
	await.For(t, "assignments saved", func() (bool, string) {
		_, err := os.Stat(savedFile(dir))
		return err == nil, fmt.Sprint(err)
	})
	b, err := os.ReadFile(savedFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(envMarker)) || bytes.Contains(b, []byte("example/echo")) {
		t.Fatalf("the saved assignments hold a task's spec in the clear")
	}
	msg, err := openSaved(dir, key)
	if err != nil {
		t.Fatal(err)
	}
	if env := msg.GetChanges()[0].GetTask().GetSpec().GetContainer().GetEnv(); !slices.Contains(env, "PASSWORD="+envMarker) {
		t.Fatalf("the saved task's env is %q, want it kept (sealed)", env)
	}

	renewed := seal.NewKey()
	h.agent.SetCacheKey(renewed)
	await.For(t, "assignments saved again under the new key", func() (bool, string) {
		msg, err := openSaved(dir, renewed)
		return err == nil && len(msg.GetChanges()) == 1, fmt.Sprint(err)
	})
	if strings.Contains(logs.String(), envMarker) {
		t.Fatalf("the agent logged a task's environment")
	}
}

// TestSavedAssignmentsUnreadableIgnored: a saved file that does not open
// with the agent's key (sealed under the node's previous key, damaged) is
// not fatal: the agent logs it without its contents, waits for the
// managers' set, and saves that under its key.
func TestSavedAssignmentsUnreadableIgnored(t *testing.T) {
	saved := &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL,
		Changes: []*api.AssignmentChange{update(withSecretEnv(task("old", stRunning, stRunning)))}}
	for name, write := range map[string]func(t *testing.T, dir string, key []byte){
		"other key": func(t *testing.T, dir string, key []byte) { writeSaved(t, dir, seal.NewKey(), saved) },
		"damaged": func(t *testing.T, dir string, key []byte) {
			writeSaved(t, dir, key, saved)
			b, err := os.ReadFile(savedFile(dir))
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 0x40
			if err := os.WriteFile(savedFile(dir), b, 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"truncated": func(t *testing.T, dir string, key []byte) {
			writeSaved(t, dir, key, saved)
			if err := os.Truncate(savedFile(dir), seal.Overhead-1); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir, key := t.TempDir(), seal.NewKey()
			write(t, dir, key)
			logs := &logBuffer{}
			exe := newFakeExecutor()
			h := startAgent(t, exe, newFakeDispatcher(), withState(dir, key), withLog(logs))
			await.For(t, "a session", func() bool { return h.disp.sessionCount() == 1 })
			h.disp.full(t, 1, task("t1", stAssigned, stRunning))
			h.disp.waitState(t, "t1", stRunning)
			if v := exe.verbs("old"); len(v) > 0 {
				t.Fatalf("a task from an unreadable saved file was acted on: %v", v)
			}
			await.For(t, "the managers' set saved under the agent's key", func() (bool, string) {
				msg, err := openSaved(dir, key)
				return err == nil && slices.Equal(savedTaskIDs(msg), []string{"t1"}), fmt.Sprint(savedTaskIDs(msg), err)
			})
			log := logs.String()
			if !strings.Contains(log, "ignoring the saved assignments") {
				t.Errorf("the unreadable file was not logged; log:\n%s", log)
			}
			if strings.Contains(log, envMarker) {
				t.Errorf("the agent logged a saved task's environment")
			}
		})
	}
}

// TestSavedAssignmentsPlaintextSealed: a file an older shoald saved in
// the clear is read once (its tasks adopted, not started again) and
// replaced by a sealed one at once.
func TestSavedAssignmentsPlaintextSealed(t *testing.T) {
	dir, key := t.TempDir(), seal.NewKey()
	writeSaved(t, dir, nil, &api.AssignmentsMessage{Type: api.AssignmentType_ASSIGNMENT_TYPE_FULL,
		Changes: []*api.AssignmentChange{update(withSecretEnv(task("t1", stRunning, stRunning)))}})
	exe := newFakeExecutor()
	exe.prepareErr["t1"] = exec.ErrTaskPrepared // its container exists
	startAgent(t, exe, newFakeDispatcher(), withState(dir, key))
	await.For(t, "the task saved in the clear watched", func() (bool, string) {
		v := exe.verbs("t1")
		return slices.Contains(v, "wait"), "verbs: " + strings.Join(v, " ")
	})
	if slices.Contains(exe.verbs("t1"), "start") {
		t.Fatalf("restored running task was started again: %v", exe.verbs("t1"))
	}
	await.For(t, "the file sealed", func() (bool, string) {
		msg, err := openSaved(dir, key)
		return err == nil && slices.Equal(savedTaskIDs(msg), []string{"t1"}), fmt.Sprint(savedTaskIDs(msg), err)
	})
	b, err := os.ReadFile(savedFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte(envMarker)) {
		t.Fatalf("the sealed file still holds the environment in the clear")
	}
}

// TestAgentNeedsCacheKey: an agent told to keep its assignments but given
// no key to seal them with refuses to be built, rather than writing them
// in the clear.
func TestAgentNeedsCacheKey(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatalf("New with a StateDir and no CacheKey did not panic")
		}
	}()
	New(Config{NodeID: "node1", Executor: newFakeExecutor(), StateDir: t.TempDir()})
}
