package state

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

func open(t *testing.T, dir string, bootstrap bool) *Node {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress("node1"))
	n, err := Open(Config{Dir: dir, ID: "node1", Transport: tr, SnapshotThreshold: 64}, bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		n.Close()
		t.Fatal(err)
	}
	return n
}

// TestRestartKeepsState writes many commands, snapshots part way, restarts
// the member and checks the store is the same: snapshot plus log replay.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, true)
	ctx := context.Background()
	for i := 0; i < 300; i++ {
		task := &api.Task{Id: fmt.Sprintf("t%04d", i), ServiceId: "s1", Slot: uint64(i)}
		if err := n.Propose(ctx, store.Create(task)); err != nil {
			t.Fatal(err)
		}
		if i == 150 {
			if err := n.Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// An update that conflicts must be refused and change nothing.
	if err := n.Propose(ctx, store.Update(&api.Task{Id: "t0001", Meta: &api.Meta{Version: 1}})); err == nil {
		t.Fatal("stale update was accepted")
	}
	want := n.Store().Snapshot()
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := Open(Config{Dir: dir, ID: "node1", Transport: inmem("node1")}, true); err == nil {
		t.Fatal("bootstrap over existing state succeeded")
	}

	r := open(t, dir, false)
	defer r.Close()
	// Replay of the log after the snapshot happens once the member leads.
	if err := r.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	got := r.Store().Snapshot()
	if !proto.Equal(want, got) {
		t.Fatalf("state after restart differs: %d tasks, want %d", len(got.Tasks), len(want.Tasks))
	}
}

func inmem(addr string) raft.Transport {
	_, tr := raft.NewInmemTransport(raft.ServerAddress(addr))
	return tr
}
