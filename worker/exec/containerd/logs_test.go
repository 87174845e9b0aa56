package containerd

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestChattyTaskLogBounded runs a task writing 1 MiB of log a second
// under a 64 KiB cap of 3 files: its log stays within the cap (plus what
// it writes between two checks), the newest lines are kept, and removing
// the task removes every part.
func TestChattyTaskLogBounded(t *testing.T) {
	f := newFixture(t)
	const (
		maxSize  = 64 << 10
		maxFiles = 3
		rate     = 1 << 20 // bytes a second
	)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	logDir := t.TempDir()
	e, err := New(ctx, Config{
		Namespace: f.ns, NodeID: "node-1", LogDir: logDir,
		LogMaxSize: maxSize, LogMaxFiles: maxFiles,
		Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	task := f.echoTask(fmt.Sprintf("ECHO_LOG_KIB_S=%d", rate>>10))
	ctl := f.controller(t, e, task)
	prepareAndStart(t, ctx, ctl)
	waitOutput(t, ctx, ctl, "chatter")

	path := ctl.(*controller).logPath()
	// Each part may overshoot the cap by what the task writes between
	// two checks (doubled for a late tick); the task writes 6 MiB in the
	// time measured, so an unbounded log is far above this.
	bound := int64(maxFiles * (maxSize + 2*rate*int64(logCheckInterval)/int64(time.Second)))
	var peak int64
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
		var total int64
		parts, _ := filepath.Glob(path + "*")
		for _, p := range parts {
			if fi, err := os.Stat(p); err == nil {
				total += fi.Size()
			}
		}
		peak = max(peak, total)
		time.Sleep(50 * time.Millisecond)
	}
	if peak > bound {
		t.Errorf("task log peaked at %d bytes, bound %d (%d files of %d plus two check intervals of output)", peak, bound, maxFiles, maxSize)
	}
	parts, _ := filepath.Glob(path + "*")
	if len(parts) > maxFiles {
		t.Errorf("task log spans %d files, want at most %d: %v", len(parts), maxFiles, parts)
	}
	// The live part holds the newest lines, or has just been emptied
	// and the newest are in the first rotated part.
	newest := ""
	for _, p := range []string{path, path + ".1"} {
		b, _ := os.ReadFile(p)
		if i := strings.LastIndex(string(b), "chatter "); i >= 0 {
			newest = string(b[i:min(len(b), i+20)])
			break
		}
	}
	if newest == "" {
		t.Error("no recent output in the task log")
	}
	if err := ctl.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(path + "*"); len(left) > 0 {
		t.Errorf("removing the task left %v", left)
	}
}

// TestRotateKeepsNewestParts drives the rotator by hand: parts shift up,
// the oldest goes, the live file is emptied in place (the shim's append
// descriptor keeps working).
func TestRotateKeepsNewestParts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "task.log")
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r := &logRotator{dir: dir, maxSize: 10, maxFiles: 3, logger: slog.New(slog.DiscardHandler)}
	for i := range 5 {
		fmt.Fprintf(w, "generation %d\n", i)
		r.sweep()
	}
	fmt.Fprintf(w, "live\n")
	want := map[string]string{"task.log": "live\n", "task.log.1": "generation 4\n", "task.log.2": "generation 3\n"}
	entries, _ := os.ReadDir(dir)
	if len(entries) != len(want) {
		t.Errorf("files %v, want %v", entries, want)
	}
	for name, content := range want {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil || string(b) != content {
			t.Errorf("%s: %q (%v), want %q", name, b, err, content)
		}
	}
}
