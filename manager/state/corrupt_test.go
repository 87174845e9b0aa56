package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// openWith starts a member from dir with cfg's tuning and waits for it to
// lead and apply its log.
func openWith(t *testing.T, cfg Config, bootstrap bool) (*Node, error) {
	t.Helper()
	_, tr := raft.NewInmemTransport(raft.ServerAddress("node1"))
	cfg.ID, cfg.Transport = "node1", tr
	n, err := Open(cfg, bootstrap)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.WaitLeader(ctx); err != nil {
		n.Close()
		t.Fatal(err)
	}
	return n, nil
}

func proposeTasks(t *testing.T, n *Node, prefix string, count int) {
	t.Helper()
	for i := range count {
		task := &api.Task{Id: fmt.Sprintf("%s-%04d", prefix, i), ServiceId: "s1", Slot: uint64(i)}
		if err := n.Propose(context.Background(), store.Create(task)); err != nil {
			t.Fatal(err)
		}
	}
}

// flip inverts the byte at off in path (off < 0 counts from the end).
func flip(t *testing.T, path string, off int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if off < 0 {
		off += int64(len(b))
	}
	b[off] ^= 0xff
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantDamaged(t *testing.T, n *Node, err error, mentions ...string) {
	t.Helper()
	if err == nil {
		snap := n.Store().Snapshot()
		n.Close()
		t.Fatalf("a damaged raft state was opened and served (%d tasks)", len(snap.Tasks))
	}
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("open damaged state: %v, want ErrDamaged", err)
	}
	for _, m := range append(mentions, "docs/recovery.md") {
		if !strings.Contains(err.Error(), m) {
			t.Errorf("error %q does not mention %q", err, m)
		}
	}
}

// TestDamagedLogEntry flips one byte of a command inside raft.db, where
// bbolt sees nothing wrong (it checksums only its meta pages): the member
// must refuse to start, not apply a different command than was agreed.
func TestDamagedLogEntry(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{Dir: dir, SnapshotThreshold: 1 << 20}
	n, err := openWith(t, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	proposeTasks(t, n, "before", 20)
	proposeTasks(t, n, "victim", 1)
	victim := n.raft.LastIndex()
	proposeTasks(t, n, "after", 20)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "raft.db")
	// The command is sealed at rest: find the victim's bytes as stored.
	raw, err := raftboltdb.New(raftboltdb.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var stored raft.Log
	err = raw.GetLog(victim, &stored)
	raw.Close()
	if err != nil || len(stored.Data) < 32 {
		t.Fatalf("victim entry %d: %v (%d bytes)", victim, err, len(stored.Data))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// bbolt may hold stale copies of the page too: change them all, as a
	// bad sector under the live one would look.
	if bytes.Count(b, stored.Data) == 0 {
		t.Fatal("the command is not in raft.db")
	}
	flipped := bytes.Clone(stored.Data)
	flipped[len(flipped)/2] ^= 0x01
	b = bytes.ReplaceAll(b, stored.Data, flipped)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := openWith(t, cfg, false)
	wantDamaged(t, r, err, "raft.db", "log entry")
}

// TestDamagedSnapshot flips a byte in the newest snapshot. When an older
// snapshot and the log still hold everything, the member restores from
// them and sets the damaged one aside; when they do not (the log was
// compacted past the older one, or the snapshot's metadata cannot be
// read), it refuses to start rather than serve an older, partial store.
func TestDamagedSnapshot(t *testing.T) {
	// build makes two snapshots with entries after each and returns the
	// store as it was, and the newest snapshot's dir.
	build := func(t *testing.T, cfg Config) (*api.StoreSnapshot, string) {
		n, err := openWith(t, cfg, true)
		if err != nil {
			t.Fatal(err)
		}
		proposeTasks(t, n, "a", 30)
		if err := n.Snapshot(); err != nil {
			t.Fatal(err)
		}
		proposeTasks(t, n, "b", 30)
		if err := n.Snapshot(); err != nil {
			t.Fatal(err)
		}
		proposeTasks(t, n, "c", 5)
		want := n.Store().Snapshot()
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
		metas, err := n.snaps.List()
		if err != nil || len(metas) != 2 {
			t.Fatalf("snapshots: %d, %v; want 2", len(metas), err)
		}
		return want, filepath.Join(cfg.Dir, "snapshots", metas[0].ID)
	}

	t.Run("older snapshot and log cover it", func(t *testing.T) {
		cfg := Config{Dir: t.TempDir(), SnapshotThreshold: 1 << 20}
		want, newest := build(t, cfg)
		flip(t, filepath.Join(newest, "state.bin"), 10)
		r, err := openWith(t, cfg, false)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if err := r.raft.Barrier(5 * time.Second).Error(); err != nil {
			t.Fatal(err)
		}
		if got := r.Store().Snapshot(); !proto.Equal(want, got) {
			t.Fatalf("restored %d tasks, want %d", len(got.Tasks), len(want.Tasks))
		}
		if _, err := os.Stat(filepath.Join(cfg.Dir, "damaged", filepath.Base(newest))); err != nil {
			t.Errorf("damaged snapshot not set aside: %v", err)
		}
	})
	t.Run("log compacted past the older snapshot", func(t *testing.T) {
		cfg := Config{Dir: t.TempDir(), SnapshotThreshold: 1 << 20, TrailingLogs: 1}
		_, newest := build(t, cfg)
		flip(t, filepath.Join(newest, "state.bin"), 10)
		r, err := openWith(t, cfg, false)
		wantDamaged(t, r, err, filepath.Base(newest), "checksum")
	})
	t.Run("unreadable metadata", func(t *testing.T) {
		cfg := Config{Dir: t.TempDir(), SnapshotThreshold: 1 << 20, TrailingLogs: 1}
		_, newest := build(t, cfg)
		flip(t, filepath.Join(newest, "meta.json"), 0)
		r, err := openWith(t, cfg, false)
		wantDamaged(t, r, err, filepath.Base(newest), "metadata")
	})
}
