package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// secretMarkers are bytes that must never reach the disk in the clear.
var secretMarkers = [][]byte{
	[]byte("-----BEGIN EC PRIVATE KEY-----\nSECRET-CA-KEY-MARKER"),
	[]byte("SHOAL-1-abc-SECRET-JOIN-TOKEN-MARKER"),
	[]byte("DB_PASSWORD=SECRET-ENV-MARKER"),
}

// proposeSecrets writes a cluster object with a CA key and join tokens, and
// services whose env carries a secret, in many entries (some in a
// snapshot, some after it).
func proposeSecrets(t *testing.T, n interface {
	Propose(context.Context, ...*api.StoreAction) error
}, snapshot func() error) {
	t.Helper()
	ctx := context.Background()
	cluster := &api.Cluster{Id: "c1", RootCa: &api.RootCA{KeyPem: secretMarkers[0]}, JoinTokens: &api.JoinTokens{Manager: string(secretMarkers[1])}}
	if err := n.Propose(ctx, store.Create(cluster)); err != nil {
		t.Fatal(err)
	}
	for i := range 120 {
		svc := &api.Service{Id: fmt.Sprintf("s%03d", i), Spec: &api.ServiceSpec{Name: fmt.Sprintf("svc%d", i), Task: &api.TaskSpec{Container: &api.ContainerSpec{Env: []string{string(secretMarkers[2])}}}}}
		if err := n.Propose(ctx, store.Create(svc)); err != nil {
			t.Fatal(err)
		}
		if i == 60 && snapshot != nil {
			if err := snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// assertNoSecrets reads every file under dir: none may hold a marker, and
// every file and directory is owner-only.
func assertNoSecrets(t *testing.T, dir string) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if d.IsDir() {
			if info.Mode().Perm() != 0o700 {
				t.Errorf("directory %s has mode %v, want 0700", path, info.Mode().Perm())
			}
			return nil
		}
		files++
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("file %s has mode %v, want no access for group and others", path, info.Mode().Perm())
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range secretMarkers {
			if bytes.Contains(b, m) {
				t.Errorf("%s holds a secret in the clear: %q", path, m)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 {
		t.Fatalf("found only %d files under %s: the test looks at nothing", files, dir)
	}
}

func stateOf(t *testing.T, n *Node) *api.StoreSnapshot {
	t.Helper()
	if err := n.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	return n.Store().Snapshot()
}

// TestSecretsAtRest: after secrets went through the log and a snapshot,
// no file under the raft dir holds one, modes are owner-only (also where
// they were loose before), and a restart reads it all back.
func TestSecretsAtRest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "raft")
	// A data dir made loose by an older shoald or by hand.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := open(t, dir, true)
	proposeSecrets(t, n, n.Snapshot)
	want := stateOf(t, n)
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	assertNoSecrets(t, dir)
	if len(want.GetClusters()) != 1 || len(want.GetServices()) != 120 {
		t.Fatalf("state before restart: %d clusters, %d services", len(want.GetClusters()), len(want.GetServices()))
	}

	r := open(t, dir, false)
	got := stateOf(t, r)
	// A snapshot after the restart is sealed as well.
	if err := r.Snapshot(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if !proto.Equal(want, got) {
		t.Fatalf("state after restart differs: %d services, want %d", len(got.GetServices()), len(want.GetServices()))
	}
	assertNoSecrets(t, dir)
}

// TestUnlockKey: once the data key is wrapped by an unlock key, the member
// does not open without it, refuses a wrong one, and opens with the right
// one; unlocking again puts the wrapping key back on disk.
func TestUnlockKey(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, true)
	proposeSecrets(t, n, n.Snapshot)
	want := stateOf(t, n)
	key, err := ParseUnlockKey(NewUnlockKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := n.SetUnlockKey(key); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if !Locked(dir) {
		t.Fatal("Locked = false after SetUnlockKey")
	}
	if b, err := os.ReadFile(keysPath(dir)); err != nil || bytes.Contains(b, key) {
		t.Fatalf("keys file holds the unlock key (%v)", err)
	}

	cfg := Config{Dir: dir, ID: "node1", Transport: inmem("node1")}
	if _, err := Open(cfg, false); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open without the unlock key: %v, want ErrLocked", err)
	}
	wrong, _ := ParseUnlockKey(NewUnlockKey())
	cfg.UnlockKey = wrong
	if _, err := Open(cfg, false); !errors.Is(err, ErrWrongUnlockKey) {
		t.Fatalf("Open with a wrong unlock key: %v, want ErrWrongUnlockKey", err)
	}
	if _, err := ParseUnlockKey("SHOALKEY-1-short"); err == nil {
		t.Error("a malformed unlock key parsed")
	}

	cfg.UnlockKey = key
	r, err := Open(cfg, false)
	if err != nil {
		t.Fatalf("Open with the unlock key: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, r); !proto.Equal(want, got) {
		t.Fatalf("state after unlocking differs")
	}
	if err := r.SetUnlockKey(nil); err != nil {
		t.Fatal(err)
	}
	r.Close()
	if Locked(dir) {
		t.Fatal("still locked after SetUnlockKey(nil)")
	}
	r = open(t, dir, false)
	r.Close()
}

// openPlaintext starts a member the way shoald did before encryption at
// rest: the bolt store and file snapshots as they are.
func openPlaintext(t *testing.T, dir string) (*raft.Raft, *raftboltdb.BoltStore, *store.Store) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStore(dir, snapshotRetain, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	tr := inmem("node1")
	rc := raftConfig(Config{ID: "node1", SnapshotThreshold: 64})
	if err := raft.BootstrapCluster(rc, bolt, bolt, snaps, tr, raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "node1", Address: tr.LocalAddr()}}}); err != nil {
		t.Fatal(err)
	}
	st := store.New()
	r, err := raft.NewRaft(rc, &fsm{store: st}, bolt, bolt, snaps, tr)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("plaintext member did not lead")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return r, bolt, st
}

// plainProposer proposes through a plaintext member.
type plainProposer struct{ r *raft.Raft }

func (p plainProposer) Propose(_ context.Context, actions ...*api.StoreAction) error {
	b, err := proto.Marshal(&api.Command{Actions: actions})
	if err != nil {
		return err
	}
	f := p.r.Apply(b, 5*time.Second)
	if err := f.Error(); err != nil {
		return err
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	return nil
}

// TestPlaintextStateIsSealed: a raft dir an older shoald wrote in the
// clear (secrets in raft.db and a snapshot) is encrypted when the member
// starts: same state, term and members, no secret left on disk.
func TestPlaintextStateIsSealed(t *testing.T) {
	dir := t.TempDir()
	r, bolt, st := openPlaintext(t, dir)
	proposeSecrets(t, plainProposer{r}, func() error { return r.Snapshot().Error() })
	if err := r.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	want := st.Snapshot()
	term := r.Stats()["term"]
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	bolt.Close()
	// The plaintext is there to begin with: the test can see a secret.
	if b, _ := os.ReadFile(filepath.Join(dir, "raft.db")); !bytes.Contains(b, secretMarkers[2]) {
		t.Fatal("the plaintext raft.db holds no secret: the test proves nothing")
	}

	n := open(t, dir, false)
	got := stateOf(t, n)
	if gotTerm := n.raft.Stats()["term"]; gotTerm < term {
		t.Errorf("term after sealing %s, before %s", gotTerm, term)
	}
	members, err := n.Members()
	if err != nil || len(members) != 1 {
		t.Errorf("members after sealing: %v, %v", members, err)
	}
	n.Close()
	if !proto.Equal(want, got) {
		t.Fatalf("state after sealing differs: %d services, want %d", len(got.GetServices()), len(want.GetServices()))
	}
	assertNoSecrets(t, dir)
	if _, err := os.Stat(sealingDir(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", sealingDir(dir), err)
	}
}

// TestSnapshotInstallSealed: a member that joins after the leader
// compacted its log gets the leader's snapshot over the transport
// (plaintext there, as the FSM sees it), stores it sealed with its own
// key, and ends with the leader's state and no secret on its disk.
func TestSnapshotInstallSealed(t *testing.T) {
	a1, t1 := raft.NewInmemTransport("node1")
	a2, t2 := raft.NewInmemTransport("node2")
	t1.Connect(a2, t2)
	t2.Connect(a1, t1)
	dir1, dir2 := t.TempDir(), t.TempDir()
	leader, err := Open(Config{Dir: dir1, ID: "node1", Transport: t1, SnapshotThreshold: 64, TrailingLogs: 4}, true)
	if err != nil {
		t.Fatal(err)
	}
	defer leader.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := leader.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	proposeSecrets(t, leader, leader.Snapshot)
	if err := leader.Snapshot(); err != nil {
		t.Fatal(err)
	}
	want := stateOf(t, leader)

	follower, err := Open(Config{Dir: dir2, ID: "node2", Transport: t2}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.AddVoter("node2", string(a2)); err != nil {
		t.Fatal(err)
	}
	// One entry after the snapshot: a restored store reports index 0
	// until it applies the next entry.
	if err := leader.Propose(ctx, store.Create(&api.Task{Id: "after-snapshot"})); err != nil {
		t.Fatal(err)
	}
	for follower.Store().Index() < leader.Store().Index() {
		select {
		case <-ctx.Done():
			t.Fatalf("follower at index %d, leader at %d", follower.Store().Index(), leader.Store().Index())
		case <-time.After(20 * time.Millisecond):
		}
	}
	got := follower.Store().Snapshot()
	if err := follower.Close(); err != nil {
		t.Fatal(err)
	}
	if len(got.GetServices()) != len(want.GetServices()) || len(got.GetClusters()) != 1 {
		t.Fatalf("follower has %d services, leader %d", len(got.GetServices()), len(want.GetServices()))
	}
	snaps, _ := os.ReadDir(snapshotsDir(dir2))
	if len(snaps) == 0 {
		t.Fatal("the follower stored no snapshot: the test did not install one")
	}
	assertNoSecrets(t, dir2)
}

// TestLostKeysRefused: an encrypted raft dir whose keys.json is gone is
// not taken for plaintext state: Open refuses it, saying what happened,
// and leaves it as it was.
func TestLostKeysRefused(t *testing.T) {
	dir := t.TempDir()
	n := open(t, dir, true)
	proposeSecrets(t, n, nil)
	n.Close()
	if err := os.Remove(keysPath(dir)); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Dir: dir, ID: "node1", Transport: inmem("node1")}, false)
	if !errors.Is(err, errKeysLost) {
		t.Fatalf("Open with the keys gone: %v, want errKeysLost", err)
	}
	if !HasState(dir) || hasKeys(dir) {
		t.Error("a refused Open changed the raft dir")
	}
	if _, err := os.Stat(sealingDir(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", sealingDir(dir), err)
	}
}
