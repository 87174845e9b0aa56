package e2e

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// TestAutolock is a user's session with autolock on a one-node cluster: the
// secrets they put in (a service's env, the join tokens, the unlock key)
// are nowhere in the clear under the data dir; the restarted manager
// answers nothing until `shoald unlock`, refuses a wrong key, and serves
// its state once given the right one.
func TestAutolock(t *testing.T) {
	n := tc.NewSingle(t)
	const secret = "e2e-autolock-secret-7d1f"
	n.Ctl("service", "create", "--detach", "--name", "vault", "--replicas", "0", "--env", "DB_PASSWORD="+secret, tc.Image)
	workerToken := strings.TrimSpace(n.Ctl("cluster", "join-token", "-q", "worker"))
	keyPEM, err := os.ReadFile(filepath.Join(n.DataDir, "certificates", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// The first line of the node key's base64 body.
	nodeKey := strings.Split(string(keyPEM), "\n")[1]
	out := n.Ctl("cluster", "update", "--autolock")
	if !strings.Contains(out, "SHOALKEY-1-") {
		t.Fatalf("cluster update --autolock printed no key:\n%s", out)
	}
	key := strings.TrimSpace(n.Ctl("cluster", "unlock-key", "-q"))
	if !strings.Contains(out, key) {
		t.Fatalf("unlock-key %q is not the key update printed:\n%s", key, out)
	}
	if out := n.Ctl("cluster", "unlock-key"); !strings.Contains(out, "shoald unlock") {
		t.Errorf("unlock-key does not say how to use the key:\n%s", out)
	}
	// The manager rewraps its raft key and reseals its node key within a
	// round of its run loop.
	tc.Eventually(t, 10*time.Second, "the manager's keys locked on disk", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(n.DataDir, "raft", "keys.json"))
		k, kerr := os.ReadFile(filepath.Join(n.DataDir, "certificates", "key.pem"))
		return err == nil && kerr == nil && bytes.Contains(b, []byte(`"locked":true`)) && bytes.Contains(k, []byte("SHOAL SEALED")), string(b)
	})
	n.Stop()

	scan := func() {
		t.Helper()
		err := filepath.WalkDir(n.DataDir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !d.Type().IsRegular() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for name, s := range map[string]string{"service env value": secret, "worker join token": workerToken, "unlock key": key, "node key": nodeKey} {
				if bytes.Contains(b, []byte(s)) {
					t.Errorf("%s holds the %s in the clear", path, name)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	scan()

	exited := n.StartNoWait("run")
	// Locked: the socket answers, but only to say so.
	tc.Eventually(t, 30*time.Second, "the locked manager says it is locked", func() (bool, string) {
		out, err := n.Try("node", "ls")
		if err == nil {
			t.Fatalf("a locked manager answered node ls:\n%s", out)
		}
		return strings.Contains(out, "locked"), out
	})
	for range 5 {
		if out, err := n.Try("service", "ls"); err == nil {
			t.Fatalf("a locked manager answered service ls:\n%s", out)
		}
		select {
		case <-exited:
			t.Fatalf("shoald exited while locked:\n%s", n.Log())
		case <-time.After(200 * time.Millisecond):
		}
	}
	unlock := func(k string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(tc.Binaries(t), "shoald"), "unlock", "--socket", n.Socket)
		cmd.Stdin = strings.NewReader(k + "\n")
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	wrong := "SHOALKEY-1-" + strings.Repeat("A", 43)
	if out, err := unlock(wrong); err == nil || !strings.Contains(out, "does not unlock") {
		t.Fatalf("shoald unlock with a wrong key: %v\n%s", err, out)
	}
	if out, err := n.Try("node", "ls"); err == nil {
		t.Fatalf("the manager answered after a wrong key:\n%s", out)
	}
	if out, err := unlock(key); err != nil {
		t.Fatalf("shoald unlock: %v\n%s\nshoald log:\n%s", err, out, n.Log())
	}
	tc.Eventually(t, 30*time.Second, "the unlocked manager answers", func() (bool, string) {
		out, err := n.Try("service", "inspect", "vault")
		return err == nil && strings.Contains(out, secret), out
	})
	if out, err := unlock(key); err == nil || !strings.Contains(out, "not locked") {
		t.Errorf("shoald unlock on a running manager: %v\n%s", err, out)
	}
	n.Stop()
	// Still autolocked: the node key stays sealed.
	scan()
}
