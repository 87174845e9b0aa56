package manager

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// scanForSecrets fails the test for any file under dir that holds one of
// secrets, and for any file or directory group or others may read.
func scanForSecrets(t *testing.T, dir string, secrets map[string][]byte) {
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
		if info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: group or others have access", path, info.Mode().Perm())
		}
		if d.IsDir() {
			return nil
		}
		files++
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for name, s := range secrets {
			if bytes.Contains(b, s) {
				t.Errorf("%s holds the %s in the clear", path, name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 {
		t.Fatalf("only %d files under %s: the scan looks at nothing", files, dir)
	}
}

// runManager runs m's controllers (and so its following of the unlock key)
// until the returned stop is called.
func runManager(t *testing.T, m *Manager) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := m.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// TestSecretsAtRestAndAutolock: a manager with a real root CA and a
// service with a secret in its env, snapshotted, then autolocked and its
// key rotated: no file under its data dir holds the CA key, a join token,
// the env value or the unlock key; restarted, it opens nothing without the
// current unlock key, refuses the old and a wrong one, and opens with the
// current one, its state intact.
func TestSecretsAtRestAndAutolock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
	defer cancel()
	dir := t.TempDir()
	founding, err := ca.Found(selfID, "127.0.0.1:4243", &api.NodeDescription{Hostname: "host-1"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := Init(ctx, testConfig(dir), founding.Cluster, founding.Node, Ingress{})
	if err != nil {
		t.Fatal(err)
	}
	stop := runManager(t, m)
	const envSecret = "DB_PASSWORD=hunter2-5f1c9a0e"
	s := spec("db", 1)
	s.Task.Container.Env = []string{envSecret}
	svc := createService(t, m, s)
	if err := m.State().Snapshot(); err != nil {
		t.Fatal(err)
	}

	lock, err := m.control.SetAutolock(ctx, &api.SetAutolockRequest{Autolock: true})
	if err != nil {
		t.Fatal(err)
	}
	oldKey := lock.GetUnlockKey()
	if oldKey == "" {
		t.Fatal("SetAutolock returned no unlock key")
	}
	if c, err := m.control.GetCluster(ctx, &api.GetClusterRequest{}); err != nil || c.GetCluster().GetUnlockKey() != "" {
		t.Fatalf("GetCluster shows the unlock key (%v)", err)
	}
	rotated, err := m.control.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{Rotate: true})
	if err != nil {
		t.Fatal(err)
	}
	key := rotated.GetUnlockKey()
	if key == oldKey || key == "" {
		t.Fatalf("rotation gave %q after %q", key, oldKey)
	}
	await.For(t, "the manager's keys wrapped by the rotated unlock key", func() (bool, string) {
		err := CheckUnlockKey(dir, key)
		return Locked(dir) && err == nil, "check: " + errString(err)
	})
	// More entries after the snapshot, so both hold secrets.
	createService(t, m, spec("web", 1))
	stop()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}

	kek, _ := state.ParseUnlockKey(key)
	secrets := map[string][]byte{
		"root CA key":        founding.Cluster.GetRootCa().GetKeyPem(),
		"root CA key's body": founding.Cluster.GetRootCa().GetKeyPem()[40:80],
		"manager join token": []byte(founding.Cluster.GetJoinTokens().GetManager()),
		"worker join token":  []byte(founding.Cluster.GetJoinTokens().GetWorker()),
		"service env value":  []byte("hunter2-5f1c9a0e"),
		"unlock key":         []byte(key),
		"unlock key's bytes": kek,
	}
	scanForSecrets(t, dir, secrets)

	if !Locked(dir) {
		t.Fatal("Locked = false for an autolocked manager")
	}
	if _, err := Open(ctx, testConfig(dir)); !errors.Is(err, ErrLocked) {
		t.Fatalf("Open of a locked manager without a key: %v, want ErrLocked", err)
	}
	for name, k := range map[string]string{"the old key": oldKey, "a wrong key": state.NewUnlockKey()} {
		cfg := testConfig(dir)
		cfg.UnlockKey, _ = state.ParseUnlockKey(k)
		if _, err := Open(ctx, cfg); !errors.Is(err, ErrWrongUnlockKey) {
			t.Fatalf("Open with %s: %v, want ErrWrongUnlockKey", name, err)
		}
		if err := CheckUnlockKey(dir, k); !errors.Is(err, ErrWrongUnlockKey) {
			t.Fatalf("CheckUnlockKey with %s: %v, want ErrWrongUnlockKey", name, err)
		}
	}
	cfg := testConfig(dir)
	cfg.UnlockKey = kek
	r, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open with the unlock key: %v", err)
	}
	if err := r.State().WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	var got *api.Service
	r.State().Store().View(func(tx store.ReadTx) { got = tx.Service(svc.GetId()) })
	if env := got.GetSpec().GetTask().GetContainer().GetEnv(); len(env) != 1 || env[0] != envSecret {
		t.Errorf("service env after unlocking: %q", env)
	}
	// Autolock off: the manager restarts unattended again.
	stop = runManager(t, r)
	if _, err := r.control.SetAutolock(ctx, &api.SetAutolockRequest{Autolock: false}); err != nil {
		t.Fatal(err)
	}
	await.For(t, "the manager unlocked", func() (bool, string) { return !Locked(dir), "still locked" })
	if _, err := r.control.GetUnlockKey(ctx, &api.GetUnlockKeyRequest{}); err == nil {
		t.Error("GetUnlockKey with autolock off returned a key")
	}
	stop()
	r.Close()
	r, err = Open(ctx, testConfig(dir))
	if err != nil {
		t.Fatalf("Open after autolock was turned off: %v", err)
	}
	r.Close()
	scanForSecrets(t, dir, secrets)
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}
