package lab

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testcluster"
)

// requireLab skips unless this machine can run a lab now: root,
// containerd, and no other lab up. It holds the machine's lab slot until
// the test ends and returns the shoald to run, built from this checkout.
func requireLab(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces and links")
	}
	if _, err := os.Stat(DefaultContainerd); err != nil {
		t.Skipf("needs containerd at %s (run `make setup`)", DefaultContainerd)
	}
	release, err := Exclusive(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	if found := Leftovers(t.Context(), ""); len(found) > 0 {
		t.Skipf("a lab is up or left over on this machine (%s): run `shoalctl lab down`", abridge(found, 4))
	}
	return filepath.Join(testcluster.Binaries(t), "shoald")
}

// upForTest makes a lab and removes it when the test ends, checking that
// nothing is left.
func upForTest(t *testing.T, cfg Config) *Lab {
	t.Helper()
	cfg.Progress = t.Output()
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	l, err := Up(t.Context(), cfg)
	if err != nil {
		if found := Leftovers(context.Background(), ""); len(found) > 0 {
			t.Errorf("failed Up left %s", strings.Join(found, ", "))
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes() {
				t.Logf("%s log:\n%s", n.Name, tail(n.LogFile(), 40))
			}
		}
		if err := l.Down(context.Background()); err != nil {
			t.Errorf("down: %v", err)
		}
		if found := Leftovers(context.Background(), ""); len(found) > 0 {
			t.Errorf("down left %s", strings.Join(found, ", "))
		}
	})
	return l
}

// dialResult probes addr from the host: "refused" means the node's
// kernel answered (the link works), anything else that it did not.
func dialResult(addr string) string {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
		return "connected"
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return "refused"
	}
	return "unreachable"
}

func TestLabLifecycle(t *testing.T) {
	shoald := requireLab(t)
	caps, err := probeShoald(t.Context(), shoald)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Managers: 1, Shoald: shoald}
	if caps.join {
		cfg.Workers = 1
	}
	l := upForTest(t, cfg)
	ctx := t.Context()

	nodes := l.Nodes()
	if len(nodes) != 1+cfg.Workers || nodes[0].Name != "manager1" {
		t.Fatalf("nodes = %+v", nodes)
	}
	if s, err := ContextSockets(); err != nil || !slices.Equal(s, []string{nodes[0].Socket}) {
		t.Errorf("context = %q, %v; want %s", s, err, nodes[0].Socket)
	}
	for _, st := range l.Status(ctx) {
		if !st.Running || !strings.HasPrefix(st.State, "ready") || st.PID == 0 {
			t.Errorf("status of %s = %+v, want running and ready", st.Name, st)
		}
	}

	t.Run("client talks to a node", func(t *testing.T) {
		c, closer, err := l.Client("manager1")
		if err != nil {
			t.Fatal(err)
		}
		defer closer.Close()
		resp, err := c.ListNodes(ctx, &api.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetNodes()) != len(nodes) {
			t.Errorf("ListNodes returned %d nodes, want %d", len(resp.GetNodes()), len(nodes))
		}
	})

	t.Run("exec runs in the node's namespace", func(t *testing.T) {
		for _, n := range nodes {
			out, err := l.Exec(ctx, n.Name, "ip", "-o", "-4", "addr", "show", "dev", "eth0")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, n.Addr.String()+"/24") {
				t.Errorf("%s: eth0 lacks %s:\n%s", n.Name, n.Addr, out)
			}
		}
		_, err := l.Exec(ctx, "manager1", "sh", "-c", "exit 3")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Errorf("exit 3: err = %v", err)
		}
	})

	t.Run("a second up is refused", func(t *testing.T) {
		_, err := Up(ctx, Config{Managers: 1, Shoald: shoald})
		if err == nil || !strings.Contains(err.Error(), "run `shoalctl lab down` first") {
			t.Fatalf("err = %v", err)
		}
		if s, _ := ContextSockets(); !slices.Equal(s, []string{nodes[0].Socket}) {
			t.Errorf("the refused up changed the context to %q", s)
		}
	})

	t.Run("link down cuts the node off", func(t *testing.T) {
		// Port 1 is closed: the node's kernel answers with a reset while
		// the node is reachable.
		addr := net.JoinHostPort(nodes[0].Addr.String(), "1")
		if got := dialResult(addr); got != "refused" {
			t.Fatalf("before: %s", got)
		}
		if err := l.SetLinkDown("manager1"); err != nil {
			t.Fatal(err)
		}
		if got := dialResult(addr); got != "unreachable" {
			t.Errorf("with the link down: %s", got)
		}
		if err := l.SetLinkUp("manager1"); err != nil {
			t.Fatal(err)
		}
		await.Within(t, 30*time.Second, pollInterval, "reachable again", func() bool { return dialResult(addr) == "refused" })
	})

	t.Run("kill and restart a node", func(t *testing.T) {
		name := nodes[len(nodes)-1].Name
		if err := l.KillNode(ctx, name); err != nil {
			t.Fatal(err)
		}
		if running, err := l.Running(name); err != nil || running {
			t.Fatalf("running after kill = %v, %v", running, err)
		}
		if err := l.StartNode(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := l.StartNode(ctx, name); err == nil || !strings.Contains(err.Error(), "already runs") {
			t.Errorf("second start: err = %v", err)
		}
		if err := l.WaitReady(ctx, name); err != nil {
			t.Fatal(err)
		}
		if running, err := l.Running(name); err != nil || !running {
			t.Fatalf("running after restart = %v, %v", running, err)
		}
		if err := l.StopNode(ctx, name); err != nil {
			t.Fatal(err)
		}
		if running, _ := l.Running(name); running {
			t.Fatalf("running after stop")
		}
		if err := l.StartNode(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("load reads the same lab back", func(t *testing.T) {
		loaded, err := Load()
		if err != nil {
			t.Fatal(err)
		}
		got, want := loaded.Nodes(), l.Nodes()
		if len(got) != len(want) {
			t.Fatalf("loaded %d nodes, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("loaded %+v, want %+v", got[i], want[i])
			}
		}
	})

	if err := l.Down(ctx); err != nil {
		t.Fatal(err)
	}
	if found := Leftovers(ctx, ""); len(found) > 0 {
		t.Fatalf("down left %s", strings.Join(found, ", "))
	}
	if _, err := Load(); !errors.Is(err, ErrNotUp) {
		t.Errorf("Load after down: %v, want ErrNotUp", err)
	}
	// Down is idempotent; the clean-up runs it once more.
	if err := Down(ctx, "", nil); err != nil {
		t.Fatalf("second down: %v", err)
	}
}
