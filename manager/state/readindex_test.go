package state

import (
	"context"
	"testing"
	"time"
)

// TestReadIndexIsACommand: the read index a leader hands out is a store
// index, the last command at or below its commit index. Its commit index
// ends in entries the store never sees (the election's no-op, the read
// barrier), so a read that waited for it would wait for the next write.
func TestReadIndexIsACommand(t *testing.T) {
	n, err := openWith(t, Config{Dir: t.TempDir()}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	proposeTasks(t, n, "t", 5)
	want := n.Store().Index()
	for range 3 { // the first one commits a barrier: it must not count
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		idx, err := n.ReadIndex(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if idx != want {
			t.Errorf("read index %d, want the last command's %d (commit index %d)", idx, want, n.raft.CommitIndex())
		}
		if err := n.WaitApplied(ctx, idx); err != nil {
			t.Errorf("a read waiting for its index never ran: %v", err)
		}
		cancel()
	}
	if n.raft.CommitIndex() <= want {
		t.Fatalf("commit index %d does not end past the last command %d: the test proves nothing", n.raft.CommitIndex(), want)
	}
	proposeTasks(t, n, "u", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if idx, err := n.ReadIndex(ctx); err != nil || idx != n.Store().Index() {
		t.Errorf("after a write: read index %d, %v; want %d", idx, err, n.Store().Index())
	}
}
