package ctl

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/golden"
	"github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

func TestLabArgErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"lab", "up", "--managers", "0"}, "at least one manager"},
		{[]string{"lab", "up", "--managers", "-2", "--workers", "3"}, "at least one manager"},
		{[]string{"lab", "up", "--workers", "-1"}, "cannot be negative"},
		{[]string{"lab", "up", "--subnet", "ten"}, `--subnet "ten": want an IPv4 prefix`},
		{[]string{"lab", "up", "--subnet", "10.0.0.0/30", "--workers", "1"}, "too small for 2 nodes"},
		{[]string{"lab", "up", "--subnet", "fd00::/64"}, "IPv4"},
		{[]string{"lab", "up", "extra"}, "takes no arguments"},
		{[]string{"lab", "status", "--format", "yaml"}, `--format "yaml": want table or json`},
		{[]string{"lab", "exec"}, "requires a node and a command"},
		{[]string{"lab", "exec", "manager1"}, "requires a node and a command"},
		{[]string{"lab", "exec", "manager1", "--"}, "requires a node and a command"},
		{[]string{"lab", "bogus"}, `unknown command "bogus"`},
		{[]string{"lab", "add"}, "say how many nodes to add"},
		{[]string{"lab", "add", "--workers", "-1"}, "say how many nodes to add"},
		{[]string{"lab", "add", "--workers", "x"}, `invalid argument "x"`},
		{[]string{"lab", "add", "worker3"}, "takes no arguments"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			f := newFixture()
			_, err := runCLI(t, f, tt.args...)
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
			if f.connects != 0 {
				t.Errorf("connected to shoald")
			}
		})
	}
}

func TestLabSocketResolution(t *testing.T) {
	labSocks := []string{"/run/shoal-lab/manager1.sock", "/run/shoal-lab/manager2.sock"}
	tests := []struct {
		name string
		env  map[string]string
		lab  []string
		args []string
		want targets
	}{
		{name: "no lab", want: targets{{socket: defaultSocket}}},
		{name: "lab up: every manager in turn", lab: labSocks, want: targets{{socket: labSocks[0]}, {socket: labSocks[1]}}},
		{name: "environment beats lab", lab: labSocks, env: map[string]string{socketEnv: "/tmp/env.sock"}, want: targets{{socket: "/tmp/env.sock"}}},
		{name: "flag beats lab", lab: labSocks, args: []string{"--socket", "/tmp/flag.sock"}, want: targets{{socket: "/tmp/flag.sock"}}},
		{name: "flag with the default value beats lab", lab: labSocks, args: []string{"--socket", defaultSocket}, want: targets{{socket: defaultSocket}}},
		{name: "host beats lab", lab: labSocks, args: []string{"--host", "127.0.0.1"}, want: targets{{host: "127.0.0.1:4242", tlsDir: defaultTLSDir}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			e := testEnv(f)
			var got targets
			e.connect = func(_ context.Context, ts targets) (api.ControlClient, io.Closer, error) {
				got = ts
				return f, nopCloser{}, nil
			}
			e.getenv = func(k string) string { return tt.env[k] }
			e.labSockets = func() []string { return tt.lab }
			if _, err := runWith(t, e, append(tt.args, "service", "ls", "-q")...); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("dialled %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestLabStatusTable(t *testing.T) {
	_, nodes, err := lab.Plan(lab.Config{Managers: 2, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	nodes[0].PID, nodes[1].PID, nodes[2].PID = 101, 102, 0
	st := []lab.NodeStatus{
		{Node: nodes[0], Running: true, State: "ready leader"},
		{Node: nodes[1], Running: true, State: "ready"},
		{Node: nodes[2]},
	}
	var b strings.Builder
	if err := printLabStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "lab_status_table", b.String())

	// The JSON names the fields the e2e tests and scripts read.
	js, err := json.Marshal(st[:1])
	if err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	if err := json.Unmarshal(js, &objs); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"name": "manager1", "role": "manager", "address": "10.213.0.2", "namespace": "shoal-lab-manager1",
		"pid": float64(101), "running": true, "state": "ready leader", "socket": "/run/shoal-lab/manager1.sock",
	} {
		if objs[0][k] != want {
			t.Errorf("json %s = %v, want %v", k, objs[0][k], want)
		}
	}
}

// Everything below runs the real binaries as root and makes a real lab.

// labBinaries skips unless this machine can run a lab now, holds the
// machine's lab slot until the test ends, and returns the directory of
// shoald and shoalctl built from this checkout.
func labBinaries(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make network namespaces and links")
	}
	if _, err := os.Stat(lab.DefaultContainerd); err != nil {
		t.Skipf("needs containerd at %s (run `make setup`)", lab.DefaultContainerd)
	}
	release, err := lab.Exclusive(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	if found := lab.Leftovers(t.Context(), ""); len(found) > 0 {
		t.Skipf("a lab is up or left over on this machine (%s): run `shoalctl lab down`", strings.Join(found, ", "))
	}
	dir := testcluster.Binaries(t)
	// Down runs even when the test fails half way; it also checks that
	// nothing is left.
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"manager1", "worker1"} {
				if b, err := os.ReadFile(filepath.Join(lab.DataRoot, n, "shoald.log")); err == nil {
					t.Logf("%s log:\n%s", n, b)
				}
			}
		}
		if out, err := shoalctlIn(dir, "", "lab", "down"); err != nil {
			t.Errorf("lab down: %v\n%s", err, out)
		}
		checkNoLab(t)
	})
	return dir
}

// shoalctlIn runs a built shoalctl as a user would: no socket settings in
// its environment, so the lab context decides.
func shoalctlIn(dir, stdin string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(dir, "shoalctl"), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, socketEnv+"=") && !strings.HasPrefix(kv, hostEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustShoalctl(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := shoalctlIn(dir, "", args...)
	if err != nil {
		t.Fatalf("shoalctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// checkNoLab fails the test if anything of a lab is left: processes,
// network namespaces, links, containerd namespaces and shims, files.
func checkNoLab(t *testing.T) {
	t.Helper()
	if found := lab.Leftovers(context.Background(), ""); len(found) > 0 {
		t.Errorf("left behind: %s", strings.Join(found, ", "))
	}
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err == nil && strings.Contains(string(out), lab.NamespacePrefix) {
		t.Errorf("ip netns list still shows a lab namespace:\n%s", out)
	}
}

func labStatus(t *testing.T, dir string) []lab.NodeStatus {
	t.Helper()
	var st []lab.NodeStatus
	out := mustShoalctl(t, dir, "lab", "status", "--format", "json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("lab status --format json: %v\n%s", err, out)
	}
	return st
}

func TestLabUpStatusExecDown(t *testing.T) {
	dir := labBinaries(t)
	out := mustShoalctl(t, dir, "lab", "up", "--managers", "1")
	for _, want := range []string{"manager1", "10.213.0.2", "shoalctl lab exec", "shoalctl lab down"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}

	st := labStatus(t, dir)
	if len(st) != 1 {
		t.Fatalf("status lists %d nodes, want 1: %+v", len(st), st)
	}
	n := st[0]
	if n.Name != "manager1" || n.Role != lab.RoleManager || n.Addr != netip.MustParseAddr("10.213.0.2") ||
		n.Namespace != "shoal-lab-manager1" || n.PID == 0 || !n.Running || !strings.HasPrefix(n.State, "ready") {
		t.Errorf("status = %+v", n)
	}

	out = mustShoalctl(t, dir, "lab", "exec", "manager1", "--", "ip", "-o", "addr")
	if !strings.Contains(out, "eth0") || !strings.Contains(out, "inet 10.213.0.2/24") {
		t.Errorf("lab exec ip -o addr:\n%s", out)
	}
	// The command's exit code and its input are passed through.
	_, err := shoalctlIn(dir, "", "lab", "exec", "manager1", "--", "sh", "-c", "exit 7")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 7 {
		t.Errorf("lab exec sh -c 'exit 7': err = %v, want exit code 7", err)
	}
	if out, err := shoalctlIn(dir, "piped\n", "lab", "exec", "manager1", "cat"); err != nil || out != "piped\n" {
		t.Errorf("lab exec cat = %q, %v", out, err)
	}

	// Plain shoalctl talks to the lab.
	out = mustShoalctl(t, dir, "node", "ls")
	if !strings.Contains(out, "manager1") || !strings.Contains(out, "Ready") {
		t.Errorf("node ls through the lab context:\n%s", out)
	}

	t.Run("bad input", func(t *testing.T) {
		out, err := shoalctlIn(dir, "", "lab", "exec", "worker9", "--", "true")
		if err == nil || !strings.Contains(out, `no node "worker9" in the lab: it has manager1`) {
			t.Errorf("exec on an unknown node: %v\n%s", err, out)
		}
		out, err = shoalctlIn(dir, "", "lab", "exec", "manager1", "--", "no-such-command-anywhere")
		if err == nil || !strings.Contains(out, "not found") {
			t.Errorf("exec of a missing command: %v\n%s", err, out)
		}
		out, err = shoalctlIn(dir, "", "lab", "up")
		if err == nil || !strings.Contains(out, "run `shoalctl lab down` first") {
			t.Errorf("second lab up: %v\n%s", err, out)
		}
		// The refused up broke nothing.
		if st := labStatus(t, dir); len(st) != 1 || !st[0].Running {
			t.Errorf("after the refused up: %+v", st)
		}
	})

	mustShoalctl(t, dir, "lab", "down")
	checkNoLab(t)
	out, err = shoalctlIn(dir, "", "node", "ls")
	if err == nil || !strings.Contains(out, defaultSocket) {
		t.Errorf("node ls after lab down should try the default socket again: %v\n%s", err, out)
	}
	out, err = shoalctlIn(dir, "", "lab", "status")
	if err == nil || !strings.Contains(out, "no lab is up") {
		t.Errorf("lab status after down: %v\n%s", err, out)
	}
	// Twice is fine.
	mustShoalctl(t, dir, "lab", "down")
}

// TestLabDownAfterCrash kills every shoald of a lab that runs a container
// and checks that lab down still removes everything, the container too.
func TestLabDownAfterCrash(t *testing.T) {
	dir := labBinaries(t)
	image := filepath.Join(t.TempDir(), "echo.tar")
	if err := testimage.BuildEcho(t.Context(), image, testimage.EchoRef); err != nil {
		t.Fatal(err)
	}
	mustShoalctl(t, dir, "lab", "up", "--managers", "1", "--image", image)
	mustShoalctl(t, dir, "service", "create", "--name", "crash", "--replicas", "1", testimage.EchoRef)
	await.Within(t, time.Minute, 100*time.Millisecond, "the task's container to run", func() bool { return runningTasks(t, "shoal-lab-manager1") > 0 })

	for _, n := range labStatus(t, dir) {
		if err := syscall.Kill(n.PID, syscall.SIGKILL); err != nil {
			t.Fatalf("kill shoald of %s: %v", n.Name, err)
		}
	}
	await.Within(t, time.Minute, 100*time.Millisecond, "shoald to be gone", func() bool {
		for _, n := range labStatus(t, dir) {
			if n.Running {
				return false
			}
		}
		return true
	})
	if runningTasks(t, "shoal-lab-manager1") == 0 {
		t.Fatalf("the container died with shoald; the test would prove nothing")
	}

	mustShoalctl(t, dir, "lab", "down")
	checkNoLab(t)
}

// TestLabUpFailureLeavesNothing starts a lab with a shoald that fails at
// once: lab up reports its log and removes what it made.
func TestLabUpFailureLeavesNothing(t *testing.T) {
	dir := labBinaries(t)
	fake := filepath.Join(t.TempDir(), "shoald")
	script := `#!/bin/sh
if [ "$2" = "--help" ]; then echo "--data-dir"; exit 0; fi
echo "shoald: cannot start: disk on fire" >&2
exit 1
`
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := shoalctlIn(dir, "", "lab", "up", "--shoald", fake)
	if err == nil {
		t.Fatalf("lab up with a failing shoald succeeded:\n%s", out)
	}
	for _, want := range []string{"shoald on manager1 exited", "disk on fire", "removing what it made"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}
	checkNoLab(t)
}

// runningTasks counts the running containerd tasks of a namespace.
func runningTasks(t *testing.T, namespace string) int {
	t.Helper()
	c, err := containerd.New(lab.DefaultContainerd)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), namespace), 30*time.Second)
	defer cancel()
	ctrs, err := c.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ctr := range ctrs {
		task, err := ctr.Task(ctx, nil)
		if err != nil {
			continue
		}
		if st, err := task.Status(ctx); err == nil && st.Status == containerd.Running {
			n++
		}
	}
	return n
}
