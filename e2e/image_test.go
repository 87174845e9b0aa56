package e2e

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/lab"
	ctrexec "github.com/shoal-project/shoal/worker/exec/containerd"
)

// Timings of the image test. They bound waiting; none is a measurement.
const (
	// imageConverge bounds waiting for every node to import an image or
	// for a service to settle: a 2-core machine running three shoalds
	// and containerd is slow, so leave a wide margin.
	imageConverge = 90 * time.Second
	// imageCtlTimeout bounds one shoalctl command.
	imageCtlTimeout = 2 * time.Minute
	// imageLabLock bounds waiting for another test process's lab.
	imageLabLock = 30 * time.Minute
)

// TestImageLoad is a user's session with `shoalctl image load` on a
// cluster whose nodes have never seen the image: load it once, run a
// service of it on every node, then wipe a worker's containerd namespace
// and restart it: it gets the image again from the managers.
func TestImageLoad(t *testing.T) {
	tc.Skip(t)
	ctx, cancel := context.WithTimeout(t.Context(), imageLabLock)
	defer cancel()
	release, err := lab.Exclusive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	if found := lab.Leftovers(ctx, ""); len(found) > 0 {
		t.Skipf("a lab is up or left over on this machine (%s): run `shoalctl lab down`", strings.Join(found, ", "))
	}
	bin := tc.Binaries(t)
	tarball := filepath.Join(t.TempDir(), "echo.tar")
	if err := testimage.BuildEcho(ctx, tarball, tc.Image); err != nil {
		t.Fatalf("build the echo image: %v", err)
	}
	l, err := lab.Up(ctx, lab.Config{
		Managers:   1,
		Workers:    2,
		Shoald:     filepath.Join(bin, "shoald"),
		ShoaldArgs: []string{"--log-level", "debug"},
		Progress:   t.Output(),
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes() {
				if b, err := os.ReadFile(n.LogFile()); err == nil {
					t.Logf("--- log of %s (end) ---\n%s", n.Name, lastLines(string(b), 80))
				}
			}
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
	ctl := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), imageCtlTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "shoalctl"), append([]string{"--socket", l.Socket()}, args...)...)
		cmd.Env = withoutShoalEnv()
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("shoalctl %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		return out.String()
	}

	for _, n := range l.Nodes() {
		if label, ok := nodeImage(t, n.Namespace, tc.Image); ok {
			t.Fatalf("%s has %s before the load (label %q): the test would prove nothing", n.Name, tc.Image, label)
		}
	}

	out := ctl("image", "load", tarball)
	digest := regexp.MustCompile(`Digest: (sha256:[0-9a-f]{64})`).FindStringSubmatch(out)
	if !strings.Contains(out, "Loaded image: "+tc.Image) || digest == nil {
		t.Fatalf("image load printed:\n%s", out)
	}
	id := digest[1]
	if ls := ctl("image", "ls", "--no-trunc"); !strings.Contains(ls, strings.TrimPrefix(id, "sha256:")) || !strings.Contains(ls, tc.Image) {
		t.Errorf("image ls does not list the loaded image:\n%s", ls)
	}
	waitImported := func(nodes ...lab.Node) {
		t.Helper()
		tc.Eventually(t, imageConverge, "the image imported on "+nodeNames(nodes), func() (bool, string) {
			for _, n := range nodes {
				if label, ok := nodeImage(t, n.Namespace, tc.Image); !ok || label != id {
					return false, fmt.Sprintf("%s: present %v, tarball label %q", n.Name, ok, label)
				}
			}
			return true, ""
		})
	}
	waitImported(l.Nodes()...)

	ctl("service", "create", "--name", "echo", "--replicas", "3", tc.Image)
	waitSpread := func(what string) {
		t.Helper()
		tc.Eventually(t, imageConverge, what, func() (bool, string) {
			byNode := runningByNode(t, l)
			for _, n := range l.Nodes() {
				if byNode[n.Name] != 1 {
					return false, fmt.Sprintf("running replicas by node: %v\n%s", byNode, ctlTry(bin, l.Socket(), "service", "ps", "echo"))
				}
			}
			return true, ""
		})
	}
	waitSpread("one running replica of the loaded image on every node")

	// A worker loses every image (and container) it had; restarted, it
	// imports the image again from the managers without anyone loading
	// it.
	worker, err := l.Node("worker2")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.StopNode(ctx, worker.Name); err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer pcancel()
	if err := image.PurgeNamespace(pctx, l.ContainerdAddress(), worker.Namespace); err != nil {
		t.Fatalf("purge %s: %v", worker.Namespace, err)
	}
	if _, ok := nodeImage(t, worker.Namespace, tc.Image); ok {
		t.Fatalf("%s still has the image after the purge", worker.Name)
	}
	if err := l.StartNode(ctx, worker.Name); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitReady(ctx, worker.Name); err != nil {
		t.Fatal(err)
	}
	waitImported(worker)
	// Its replica moved while it was away; scaling up puts one back.
	ctl("service", "scale", "echo=4")
	tc.Eventually(t, imageConverge, "a replica running on the restarted worker", func() (bool, string) {
		byNode := runningByNode(t, l)
		return byNode[worker.Name] >= 1, fmt.Sprintf("running replicas by node: %v", byNode)
	})
}

// nodeImage reports whether the node's containerd namespace holds an
// image named ref, and its tarball label.
func nodeImage(t *testing.T, namespace, ref string) (string, bool) {
	t.Helper()
	c, err := containerd.New(tc.ContainerdAddress)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), namespace), 10*time.Second)
	defer cancel()
	img, err := c.ImageService().Get(ctx, ref)
	if errdefs.IsNotFound(err) {
		return "", false
	}
	if err != nil {
		t.Fatalf("look up %s in %s: %v", ref, namespace, err)
	}
	return img.Labels[ctrexec.LabelImageTarball], true
}

// runningByNode counts the echo service's running tasks per node name.
func runningByNode(t *testing.T, l *lab.Lab) map[string]int {
	t.Helper()
	c, closer, err := l.Client("manager1")
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nodes, err := c.ListNodes(ctx, &api.ListNodesRequest{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	names := map[string]string{}
	for _, n := range nodes.GetNodes() {
		names[n.GetId()] = n.GetDescription().GetHostname()
	}
	tasks, err := c.ListTasks(ctx, &api.ListTasksRequest{Service: "echo"})
	if err != nil {
		t.Fatalf("list tasks: %v", err)
	}
	out := map[string]int{}
	for _, task := range runningTasks(tasks.GetTasks()) {
		out[names[task.GetNodeId()]]++
	}
	return out
}

func ctlTry(bin, socket string, args ...string) string {
	ctx, cancel := context.WithTimeout(context.Background(), imageCtlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "shoalctl"), append([]string{"--socket", socket}, args...)...)
	cmd.Env = withoutShoalEnv()
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// withoutShoalEnv is the environment without SHOAL_* variables, so that
// the caller's own settings do not redirect shoalctl.
func withoutShoalEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_") {
			env = append(env, kv)
		}
	}
	return env
}

func nodeNames(nodes []lab.Node) string {
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
