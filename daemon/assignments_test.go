package daemon

import (
	"bytes"
	"io"
	"log/slog"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/seal"
)

// TestAssignmentsKeyFollowsNodeKey: the key that seals the worker's cached
// assignments is the same after a restart, with the node key in the clear
// or sealed by the unlock key, so that the cache opens; and another node
// key (a renewal) gives another key.
func TestAssignmentsKeyFollowsNodeKey(t *testing.T) {
	dataDir := t.TempDir()
	founding, err := ca.Found("n1", "127.0.0.1:4243", &api.NodeDescription{Hostname: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.SaveCredentials(certDir(dataDir), founding.Credentials); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: dataDir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	file := nodeFile{NodeID: "n1"}
	n, err := openNode(cfg, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := assignmentsKey(n.creds)
	if err != nil {
		t.Fatal(err)
	}
	if len(key) != seal.KeySize {
		t.Fatalf("the key is %d bytes, want %d", len(key), seal.KeySize)
	}

	restarted, err := openNode(cfg, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := assignmentsKey(restarted.creds); err != nil || !bytes.Equal(again, key) {
		t.Fatalf("after a restart: key %x (%v), want %x", again, err, key)
	}

	unlock, _ := state.ParseUnlockKey(state.NewUnlockKey())
	n.followUnlockKey(unlock)
	locked, err := openNode(cfg, file, unlock)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := assignmentsKey(locked.creds); err != nil || !bytes.Equal(again, key) {
		t.Fatalf("after a restart with the node key sealed: key %x (%v), want %x", again, err, key)
	}

	other, err := ca.Found("n1", "127.0.0.1:4243", &api.NodeDescription{Hostname: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if renewed, err := assignmentsKey(other.Credentials); err != nil || bytes.Equal(renewed, key) {
		t.Fatalf("another node key gives key %x (%v), want another than %x", renewed, err, key)
	}
}
