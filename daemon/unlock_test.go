package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// lockedManager makes a manager data dir whose raft keys are wrapped by a
// new unlock key, and returns the key.
func lockedManager(t *testing.T, dataDir string, logger *slog.Logger) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := manager.Init(ctx, manager.Config{DataDir: dataDir, NodeID: "n1", Logger: logger}, nil, &api.Node{Id: "n1"}, manager.Ingress{})
	if err != nil {
		t.Fatal(err)
	}
	key := state.NewUnlockKey()
	kek, _ := state.ParseUnlockKey(key)
	if err := m.State().SetUnlockKey(kek); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if !manager.Locked(dataDir) {
		t.Fatal("the manager is not locked")
	}
	return key
}

// TestLockedManagerWaitsForUnlock: a restarted, locked manager serves only
// NodeLock on its socket; `shoald unlock` with a malformed or wrong key is
// refused and leaves it locked; the right key unlocks it, and the manager
// then opens with its state.
func TestLockedManagerWaitsForUnlock(t *testing.T) {
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	dataDir := t.TempDir()
	key := lockedManager(t, dataDir, logger)
	// A short path: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "shoal-unlock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg := Config{Socket: filepath.Join(sockDir, "shoald.sock"), DataDir: dataDir, Logger: logger}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		key []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		k, err := waitUnlock(ctx, cfg.Socket, dataDir, logger)
		done <- result{k, err}
	}()
	for !serves(cfg.Socket) {
		select {
		case <-ctx.Done():
			t.Fatal("the locked manager never served its socket")
		case <-time.After(10 * time.Millisecond):
		}
	}

	// Serves nothing but Unlock.
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := api.NewControlClient(conn).GetCluster(ctx, &api.GetClusterRequest{}); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "shoald unlock") {
		t.Fatalf("GetCluster on a locked manager: %v, want FailedPrecondition pointing at shoald unlock", err)
	}

	for name, k := range map[string]string{"a malformed key": "SHOALKEY-1-nope", "a wrong key": state.NewUnlockKey(), "no key": ""} {
		if err := Unlock(ctx, cfg, k); err == nil {
			t.Fatalf("Unlock with %s succeeded", name)
		}
		select {
		case r := <-done:
			t.Fatalf("unlocked by %s: %v", name, r.err)
		default:
		}
	}
	in, err := readUnlockKey(strings.NewReader(key + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Unlock(ctx, cfg, in); err != nil {
		t.Fatalf("Unlock with the key: %v", err)
	}
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, err := os.Stat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lock socket is left after unlocking: %v", err)
	}

	m, err := manager.Open(ctx, manager.Config{DataDir: dataDir, NodeID: "n1", Logger: logger, UnlockKey: r.key})
	if err != nil {
		t.Fatalf("open with the key Unlock took: %v", err)
	}
	defer m.Close()
	if err := m.State().WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var self *api.Node
	m.State().Store().View(func(tx store.ReadTx) { self = tx.Node("n1") })
	if self == nil {
		t.Error("the unlocked manager's store lacks its node")
	}
	// Nothing locked any more: Unlock says so.
	if err := Unlock(ctx, cfg, key); err == nil || !strings.Contains(err.Error(), "no shoald") {
		t.Errorf("Unlock with nothing listening: %v", err)
	}
}

// TestRestrictNodeFiles: a data dir left loose has its directory, keys and
// node file made owner-only when shoald takes it.
func TestRestrictNodeFiles(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	if err := os.MkdirAll(certDir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(certDir(dir), "node.key")
	if err := os.WriteFile(key, []byte("k"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nodeFilePath(dir), []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for path, want := range map[string]os.FileMode{dir: 0o700, certDir(dir): 0o700, key: 0o600, nodeFilePath(dir): 0o600} {
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
	}
}

// TestNodeKeyFollowsUnlockKey: with autolock, a manager's private key is
// sealed by the unlock key on disk: the node does not load without the
// key, refuses a wrong one, loads with the right one; autolock off saves
// it in the clear again.
func TestNodeKeyFollowsUnlockKey(t *testing.T) {
	dataDir := t.TempDir()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	founding, err := ca.Found("n1", "127.0.0.1:4243", &api.NodeDescription{Hostname: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := identity.SaveCredentials(certDir(dataDir), founding.Credentials); err != nil {
		t.Fatal(err)
	}
	cfg := Config{DataDir: dataDir, Logger: logger}
	file := nodeFile{NodeID: "n1"}
	n, err := openNode(cfg, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := state.ParseUnlockKey(state.NewUnlockKey())
	n.followUnlockKey(key)

	b, err := os.ReadFile(filepath.Join(certDir(dataDir), identity.KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	// The first line of the key's base64 body.
	if body := strings.Split(string(founding.Credentials.KeyPEM), "\n")[1]; strings.Contains(string(b), body) {
		t.Fatalf("the sealed key file holds the key:\n%s", b)
	}
	if _, err := openNode(cfg, file, nil); !errors.Is(err, identity.ErrKeySealed) {
		t.Fatalf("open without the unlock key: %v, want ErrKeySealed", err)
	}
	wrong, _ := state.ParseUnlockKey(state.NewUnlockKey())
	if _, err := openNode(cfg, file, wrong); err == nil {
		t.Fatal("open with a wrong unlock key succeeded")
	}
	r, err := openNode(cfg, file, key)
	if err != nil {
		t.Fatalf("open with the unlock key: %v", err)
	}
	if string(r.creds.KeyPEM) != string(founding.Credentials.KeyPEM) {
		t.Fatal("the unsealed key differs")
	}
	r.followUnlockKey(nil)
	if _, err := openNode(cfg, file, nil); err != nil {
		t.Fatalf("open after autolock was turned off: %v", err)
	}
}
