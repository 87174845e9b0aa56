package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
)

// TestCLIReachesAnyManager: a user on a lab of three managers keeps
// working when the manager shoalctl talks to dies, with plain shoalctl (the
// lab's context) and with --host naming the dead manager first; then grows
// the lab with `lab add --workers 1`, whose node is Ready and runs tasks.
func TestCLIReachesAnyManager(t *testing.T) {
	c := newLabCluster(t, 3, 1)
	c.logsOnFailure(t)
	// shoalctl remembers the manager that answered in the user's cache
	// directory: this test's own.
	env := append(shoalctlEnv(), "XDG_CACHE_HOME="+t.TempDir())
	shoalctl := func(extraEnv []string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "shoalctl"), args...)
		cmd.Env = slices.Concat(env, extraEnv)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	must := func(t *testing.T, extraEnv []string, args ...string) string {
		t.Helper()
		out, err := shoalctl(extraEnv, args...)
		if err != nil {
			t.Fatalf("shoalctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	// answering is the node whose shoald answered `node ls`.
	answering := func(t *testing.T, args ...string) string {
		t.Helper()
		return strings.TrimSpace(must(t, nil, append(args, "node", "ls", "--format", "{{if .Self}}{{.Hostname}}{{end}}")...))
	}

	used := answering(t)
	if used != "manager1" {
		t.Errorf("plain shoalctl talked to %s first, want manager1", used)
	}
	if err := c.KillNode(t.Context(), used); err != nil {
		t.Fatal(err)
	}

	t.Run("plain shoalctl", func(t *testing.T) {
		// Reads are linearizable, so they need a leader too: the others
		// elect one while shoalctl waits for it (up to ten seconds), with
		// no retry here.
		next := answering(t)
		if next == used || !strings.HasPrefix(next, "manager") {
			t.Fatalf("after %s died, node ls was answered by %q, want another manager", used, next)
		}
		// Writes need a leader; the dead manager was it, so the others
		// elect one first.
		tc.Eventually(t, clusterConverge, "a write through plain shoalctl", func() (bool, string) {
			out, err := shoalctl(nil, "service", "create", "--detach", "--name", "after-failover", "--replicas", "0", tc.Image)
			return err == nil, out
		})
		if out := must(t, nil, "service", "ls"); !strings.Contains(out, "after-failover") {
			t.Errorf("service ls lacks the service made after the failover:\n%s", out)
		}
	})

	t.Run("--host with the dead manager first", func(t *testing.T) {
		var hosts []string
		for _, name := range c.names(lab.RoleManager) {
			hosts = append(hosts, c.node(t, name).AdvertiseAddr())
		}
		tlsDir := []string{"--tls-dir", filepath.Join(c.node(t, "manager1").DataDir, "admin")}
		got := answering(t, append([]string{"--host", strings.Join(hosts, ",")}, tlsDir...)...)
		if got == used || !strings.HasPrefix(got, "manager") {
			t.Errorf("--host %s answered by %q, want a live manager", strings.Join(hosts, ","), got)
		}
		out := must(t, []string{"SHOAL_HOST=" + strings.Join(hosts, ", ")}, append(tlsDir, "service", "ls")...)
		if !strings.Contains(out, "after-failover") {
			t.Errorf("SHOAL_HOST with the dead manager first: service ls:\n%s", out)
		}
	})

	t.Run("lab add --workers 1", func(t *testing.T) {
		out := must(t, nil, "lab", "add", "--workers", "1")
		if !strings.Contains(out, "worker2") {
			t.Errorf("lab add output does not name worker2:\n%s", out)
		}
		t.Cleanup(func() {
			if t.Failed() {
				log := filepath.Join(lab.DataRoot, "worker2", "shoald.log")
				b, _ := os.ReadFile(log)
				t.Logf("%s (last %d lines):\n%s", log, logLines, tail(string(b), logLines))
			}
		})

		// The lab knows it: status, exec.
		var st []lab.NodeStatus
		out = must(t, nil, "lab", "status", "--format", "json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("lab status --format json: %v\n%s", err, out)
		}
		var worker2 *lab.NodeStatus
		for i := range st {
			if st[i].Name == "worker2" {
				worker2 = &st[i]
			}
		}
		if worker2 == nil || !worker2.Running || worker2.Role != lab.RoleWorker || !strings.HasPrefix(worker2.State, "ready") {
			t.Fatalf("lab status after add: %+v", st)
		}
		if out := must(t, nil, "lab", "exec", "worker2", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, worker2.Addr.String()+"/") {
			t.Errorf("lab exec worker2: eth0 lacks %s:\n%s", worker2.Addr, out)
		}

		// The cluster knows it, and runs tasks there.
		out = must(t, nil, "node", "ls")
		if !lineWith(out, "worker2", "Ready") {
			t.Errorf("node ls does not show worker2 Ready:\n%s", out)
		}
		must(t, nil, "service", "create", "--name", "on-worker2", "--replicas", "1", "--constraint", "node.hostname==worker2", tc.Image)
		tc.Eventually(t, clusterConverge, "a running container on worker2", func() (bool, string) {
			cs, err := tc.NamespaceContainers(worker2.Namespace)
			if err != nil {
				return false, err.Error()
			}
			for _, ctr := range cs {
				if ctr.Status == "running" {
					return true, ""
				}
			}
			ps, _ := shoalctl(nil, "service", "ps", "on-worker2")
			return false, ps
		})
	})
	t.Run("lab add --managers 1", func(t *testing.T) {
		must(t, nil, "lab", "add", "--managers", "1")
		// The leader sees a new member reachable once it has heard from it.
		tc.Eventually(t, clusterConverge, "manager4 a Ready, reachable manager in node ls", func() (bool, string) {
			out, err := shoalctl(nil, "node", "ls")
			return err == nil && lineWith(out, "manager4", "Ready", " Reachable"), out
		})
		// Plain shoalctl knows it too.
		sockets, err := lab.ContextSockets()
		if err != nil || !slices.Contains(sockets, filepath.Join(lab.RunRoot, "manager4.sock")) {
			t.Errorf("lab context = %q, %v; want manager4's socket in it", sockets, err)
		}
	})
}

// lineWith says whether a line of out holds every one of words.
func lineWith(out string, words ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		all := true
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			return true
		}
	}
	return false
}
