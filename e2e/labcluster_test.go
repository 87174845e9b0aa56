package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
)

// Timings of the lab suite. They bound waiting; none is a measurement.
const (
	// clusterConverge bounds waiting for the cluster to settle after a
	// change: a node must miss heartbeats (3 periods of 1 s by default)
	// before its tasks move, and a 2-core machine running five shoalds
	// and containerd is slow; leave a wide margin.
	clusterConverge = 90 * time.Second
	// ctlTimeout bounds one shoalctl or shoald command that should end
	// on its own, so a wedged daemon fails the test instead of hanging it.
	ctlTimeout = 2 * time.Minute
	// labLock bounds waiting for another test process's lab to go away.
	labLock = 30 * time.Minute
	// logLines is how much of each node's log a failure shows.
	logLines = 300
)

// logDirEnv names a directory where the node logs of failed lab tests are
// copied before the lab is removed (the lab's data dirs go with it).
const logDirEnv = "SHOAL_E2E_LOG_DIR"

// labCluster is a lab made for one test: the lab itself and the binaries
// built from this checkout.
type labCluster struct {
	*lab.Lab
	bin string
}

// newLabCluster brings up a lab of managers and workers with the echo
// image in every node's containerd namespace (also under each of refs,
// for tests that need two images), and removes it when the test ends,
// failing the test if anything is left. It skips when the machine cannot
// run a lab or another lab is up.
func newLabCluster(t *testing.T, managers, workers int, refs ...string) *labCluster {
	t.Helper()
	tc.Skip(t)
	ctx, cancel := context.WithTimeout(t.Context(), labLock)
	defer cancel()
	release, err := lab.Exclusive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	if found := lab.Leftovers(t.Context(), ""); len(found) > 0 {
		t.Skipf("a lab is up or left over on this machine (%s): run `shoalctl lab down`", strings.Join(found, ", "))
	}
	bin := tc.Binaries(t)
	var images []string
	for i, ref := range append([]string{tc.Image}, refs...) {
		image := filepath.Join(t.TempDir(), fmt.Sprintf("echo%d.tar", i))
		if err := testimage.BuildEcho(t.Context(), image, ref); err != nil {
			t.Fatalf("build the echo image %s: %v", ref, err)
		}
		images = append(images, image)
	}
	l, err := lab.Up(t.Context(), lab.Config{
		Managers:   managers,
		Workers:    workers,
		Shoald:     filepath.Join(bin, "shoald"),
		Images:     images,
		ShoaldArgs: []string{"--log-level", "debug"},
		Progress:   t.Output(),
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	c := &labCluster{Lab: l, bin: bin}
	t.Cleanup(func() {
		// Kept before Down removes them, also when the test passed so
		// far: Down's own checks may still fail it.
		if t.Failed() || os.Getenv(logDirEnv) != "" {
			c.keepLogs(t)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := l.Down(ctx); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if found := lab.Leftovers(ctx, ""); len(found) > 0 {
			t.Errorf("lab down left %s", strings.Join(found, ", "))
		}
	})
	return c
}

// keepLogs copies the node logs to $SHOAL_E2E_LOG_DIR/<test>/, when set,
// before Down removes them.
func (c *labCluster) keepLogs(t *testing.T) {
	dir := os.Getenv(logDirEnv)
	if dir == "" {
		t.Logf("set %s=DIR to keep the node logs of a failed lab test", logDirEnv)
		return
	}
	dir = filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	for _, n := range c.Nodes() {
		b, err := os.ReadFile(n.LogFile())
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, n.Name+".log"), b, 0o644)
		}
		if err != nil {
			t.Logf("keep log of %s: %v", n.Name, err)
		}
	}
	t.Logf("node logs kept in %s", dir)
}

// logsOnFailure shows what every node logged from now until the end of
// t, if t fails: the part of the logs that belongs to this (sub)test.
func (c *labCluster) logsOnFailure(t *testing.T) {
	offsets := map[string]int64{}
	for _, n := range c.Nodes() {
		if st, err := os.Stat(n.LogFile()); err == nil {
			offsets[n.Name] = st.Size()
		}
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, n := range c.Nodes() {
			t.Logf("%s: %s from this test on (last %d lines):\n%s", n.Name, n.LogFile(), logLines, logSince(n.LogFile(), offsets[n.Name], logLines))
		}
	})
}

func logSince(path string, offset int64, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(cannot read: %v)", err)
	}
	return tail(string(b), lines)
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// node returns the lab node called name.
func (c *labCluster) node(t *testing.T, name string) lab.Node {
	t.Helper()
	n, err := c.Node(name)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// names returns the names of the lab's nodes of a role ("" for all).
func (c *labCluster) names(role lab.Role) []string {
	var out []string
	for _, n := range c.Nodes() {
		if role == "" || n.Role == role {
			out = append(out, n.Name)
		}
	}
	return out
}

// manager returns a manager whose shoald runs, other than those named in
// not: what a user would talk to.
func (c *labCluster) manager(t *testing.T, not ...string) string {
	t.Helper()
	for _, name := range c.names(lab.RoleManager) {
		if slices.Contains(not, name) {
			continue
		}
		if running, err := c.Running(name); err == nil && running {
			return name
		}
	}
	t.Fatalf("no manager's shoald runs (other than %v)", not)
	return ""
}

// shoalctlEnv is the environment shoalctl runs in: without the settings
// that would send it elsewhere than the flags say.
func shoalctlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_") {
			env = append(env, kv)
		}
	}
	return env
}

// run runs a binary of the checkout to completion and returns its output.
func (c *labCluster) run(binary string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, binary), args...)
	cmd.Env = shoalctlEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// try runs shoalctl on node's unix socket, as a user logged in there.
func (c *labCluster) try(t *testing.T, node string, args ...string) (string, error) {
	t.Helper()
	return c.run("shoalctl", append([]string{"--socket", c.node(t, node).Socket}, args...)...)
}

// ctl is try that fails the test when shoalctl fails.
func (c *labCluster) ctl(t *testing.T, node string, args ...string) string {
	t.Helper()
	out, err := c.try(t, node, args...)
	if err != nil {
		t.Fatalf("shoalctl %s on %s: %v\n%s", strings.Join(args, " "), node, err, out)
	}
	return out
}

// decodeLines decodes shoalctl's --format json output, one object a line.
func decodeLines[M proto.Message](t *testing.T, out string, make func() M) []M {
	t.Helper()
	var objs []M
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		m := make()
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(line), m); err != nil {
			t.Fatalf("decode %T: %v\n%s", m, err, line)
		}
		objs = append(objs, m)
	}
	return objs
}

// clusterNodes is `node ls` as the manager named via answers it.
func (c *labCluster) clusterNodes(t *testing.T, via string) []*api.Node {
	t.Helper()
	return decodeLines(t, c.ctl(t, via, "node", "ls", "--format", "json"), func() *api.Node { return &api.Node{} })
}

// tasks is `service ps` as the manager named via answers it.
func (c *labCluster) tasks(t *testing.T, via, service string) []*api.Task {
	t.Helper()
	return decodeLines(t, c.ctl(t, via, "service", "ps", service, "--format", "json"), func() *api.Task { return &api.Task{} })
}

// hostnames maps node ids to hostnames, which are the lab's node names.
func hostnames(nodes []*api.Node) map[string]string {
	out := map[string]string{}
	for _, n := range nodes {
		out[n.GetId()] = n.GetDescription().GetHostname()
	}
	return out
}

// nodeIDs maps hostnames to node ids.
func nodeIDs(nodes []*api.Node) map[string]string {
	out := map[string]string{}
	for _, n := range nodes {
		out[n.GetDescription().GetHostname()] = n.GetId()
	}
	return out
}

// leaders returns the hostnames of the nodes marked as raft leader.
func leaders(nodes []*api.Node) []string {
	var out []string
	for _, n := range nodes {
		if n.GetManagerStatus().GetLeader() {
			out = append(out, n.GetDescription().GetHostname())
		}
	}
	return out
}

func byHostname(nodes []*api.Node, name string) *api.Node {
	for _, n := range nodes {
		if n.GetDescription().GetHostname() == name {
			return n
		}
	}
	return nil
}

// containers lists the containers in a lab node's containerd namespace.
func (c *labCluster) containers(t *testing.T, name string) []tc.Container {
	t.Helper()
	cs, err := tc.NamespaceContainers(c.node(t, name).Namespace)
	if err != nil {
		t.Fatalf("containers of %s: %v", name, err)
	}
	return cs
}

// want is the state a service must reach.
type want struct {
	replicas int
	// notOn are nodes that must run none of the service's tasks.
	notOn []string
	// unseen are nodes whose containers are not looked at: cut off or
	// without a running shoald, they cannot know what changed, and their
	// containers may run on.
	unseen []string
}

// converged waits until the service has exactly w.replicas running tasks
// (desired and current state running), one per slot, none on w.notOn,
// each with a running container on its node, and no other running
// container of the service on any node that is not w.unseen. It returns
// the running tasks by id.
func (c *labCluster) converged(t *testing.T, service string, w want) map[string]*api.Task {
	t.Helper()
	via := c.manager(t, w.unseen...)
	var running map[string]*api.Task
	what := fmt.Sprintf("%d running replicas of %s, none on %v", w.replicas, service, w.notOn)
	tc.Eventually(t, clusterConverge, what, func() (bool, string) {
		names := hostnames(c.clusterNodes(t, via))
		all := c.tasks(t, via, service)
		ours := map[string]bool{}
		running = map[string]*api.Task{}
		slots := map[uint64]string{}
		for _, task := range all {
			ours[task.GetId()] = true
			if task.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING || task.GetStatus().GetState() != api.TaskState_TASK_STATE_RUNNING {
				continue
			}
			running[task.GetId()] = task
			if other, dup := slots[task.GetSlot()]; dup {
				return false, fmt.Sprintf("slot %d has two running tasks, %s and %s\n%s", task.GetSlot(), other, task.GetId(), c.ps(t, via, service))
			}
			slots[task.GetSlot()] = task.GetId()
			if node := names[task.GetNodeId()]; slices.Contains(w.notOn, node) {
				return false, fmt.Sprintf("task %s runs on %s\n%s", task.GetId(), node, c.ps(t, via, service))
			}
		}
		if len(running) != w.replicas {
			return false, fmt.Sprintf("%d running tasks\n%s", len(running), c.ps(t, via, service))
		}
		// Every running task has its container, and no node runs a
		// container of the service that is not a running task's.
		seen := 0
		for _, name := range c.names("") {
			if slices.Contains(w.unseen, name) {
				continue
			}
			for _, ctr := range c.containers(t, name) {
				if ctr.Status != "running" || !ours[ctr.TaskID] {
					continue
				}
				task := running[ctr.TaskID]
				if task == nil {
					return false, fmt.Sprintf("%s runs container %s of task %s, which is not a running task\n%s", name, ctr.ID, ctr.TaskID, c.ps(t, via, service))
				}
				if names[task.GetNodeId()] != name {
					return false, fmt.Sprintf("%s runs container %s of task %s, which is assigned to %s", name, ctr.ID, ctr.TaskID, names[task.GetNodeId()])
				}
				seen++
			}
		}
		if seen != w.replicas {
			return false, fmt.Sprintf("%d running containers for %d running tasks\n%s", seen, w.replicas, c.ps(t, via, service))
		}
		return true, ""
	})
	return running
}

// ps is `service ps` as a user would read it, for failure messages.
func (c *labCluster) ps(t *testing.T, via, service string) string {
	out, err := c.try(t, via, "service", "ps", service, "--no-trunc")
	if err != nil {
		return fmt.Sprintf("(service ps failed: %v: %s)", err, out)
	}
	return out
}

// perNode counts tasks by the hostname of their node.
func perNode(tasks map[string]*api.Task, names map[string]string) map[string]int {
	out := map[string]int{}
	for _, task := range tasks {
		out[names[task.GetNodeId()]]++
	}
	return out
}

// sortedKeys lists a map's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// credentialsDir is where a lab node keeps its own certificate, key and
// the cluster CA (the daemon's certDir).
func credentialsDir(n lab.Node) string { return filepath.Join(n.DataDir, "certificates") }

// dialCluster makes a gRPC connection to a node's cluster port with the
// credentials in dir (a node's certificates, or the admin ones), as
// another member of the cluster would.
func dialCluster(t *testing.T, addr, dir string) *grpc.ClientConn {
	t.Helper()
	creds, err := identity.LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	roots, err := creds.Pool()
	if err != nil {
		t.Fatal(err)
	}
	return dialWith(t, addr, credentials.NewTLS(identity.ClientConfig(kp, roots, identity.ManagerServerName, identity.ALPNGRPC)))
}

// dialWith makes a gRPC connection to addr with creds, closed when the
// test ends.
func dialWith(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
