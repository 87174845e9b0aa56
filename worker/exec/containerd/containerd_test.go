package containerd

// Tests against a real containerd. Each test works in a namespace of its
// own (shoal-test-<random>) and removes everything it made, namespace
// included, however it ends.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/worker/exec"
)

// testTimeout bounds one test's calls: a container starts in well under a
// second here, so a minute means something hangs.
const testTimeout = 60 * time.Second

// needContainerd skips the test unless it runs as root next to a
// containerd socket.
func needContainerd(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containers")
	}
	if _, err := os.Stat(DefaultAddress); err != nil {
		t.Skipf("needs containerd at %s: %v", DefaultAddress, err)
	}
}

// testNamespace returns a fresh containerd namespace that is emptied and
// deleted when the test ends.
func testNamespace(t testing.TB) string {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	ns := "shoal-test-" + hex.EncodeToString(b[:])
	t.Cleanup(func() { deleteNamespace(t, DefaultAddress, ns) })
	return ns
}

// deleteNamespace removes every container, image, snapshot, blob and lease
// of ns, then ns itself.
func deleteNamespace(t testing.TB, address, ns string) {
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), ns), testTimeout)
	defer cancel()
	c, err := client.New(address, client.WithDefaultNamespace(ns))
	if err != nil {
		t.Errorf("clean up namespace %s: %v", ns, err)
		return
	}
	defer c.Close()
	fail := func(what string, err error) {
		if err != nil && !errdefs.IsNotFound(err) {
			t.Errorf("clean up namespace %s: %s: %v", ns, what, err)
		}
	}

	ctrs, err := c.Containers(ctx)
	fail("list containers", err)
	for _, ctr := range ctrs {
		if task, err := ctr.Task(ctx, nil); err == nil {
			_, err = task.Delete(ctx, client.WithProcessKill)
			fail("delete task "+ctr.ID(), err)
		}
		fail("delete container "+ctr.ID(), ctr.Delete(ctx, client.WithSnapshotCleanup))
	}
	imgs, err := c.ImageService().List(ctx)
	fail("list images", err)
	for _, img := range imgs {
		fail("delete image "+img.Name, c.ImageService().Delete(ctx, img.Name, images.SynchronousDelete()))
	}
	leases, err := c.LeasesService().List(ctx)
	fail("list leases", err)
	for _, l := range leases {
		fail("delete lease "+l.ID, c.LeasesService().Delete(ctx, l))
	}
	fail("delete snapshots", removeSnapshots(ctx, c.SnapshotService("overlayfs")))
	cs := c.ContentStore()
	var blobs []digest.Digest
	fail("list content", cs.Walk(ctx, func(info content.Info) error {
		blobs = append(blobs, info.Digest)
		return nil
	}))
	for _, d := range blobs {
		fail("delete blob "+d.String(), cs.Delete(ctx, d))
	}
	fail("delete namespace", c.NamespaceService().Delete(ctx, ns))
}

// removeSnapshots removes all snapshots, children before their parents.
func removeSnapshots(ctx context.Context, sn snapshots.Snapshotter) error {
	for {
		parents := map[string]bool{}
		var all []string
		if err := sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
			all = append(all, info.Name)
			if info.Parent != "" {
				parents[info.Parent] = true
			}
			return nil
		}); err != nil {
			return err
		}
		if len(all) == 0 {
			return nil
		}
		removed := 0
		for _, name := range all {
			if parents[name] {
				continue
			}
			if err := sn.Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("remove snapshot %s: %w", name, err)
			}
			removed++
		}
		if removed == 0 {
			return fmt.Errorf("snapshots %v form a cycle", all)
		}
	}
}

// fixture is an executor in a throwaway namespace holding the echo image.
type fixture struct {
	ns    string
	image string
	e     *Executor
}

func newFixture(t testing.TB, opts ...testimage.EchoOption) *fixture {
	t.Helper()
	needContainerd(t)
	ns := testNamespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*testTimeout)
	defer cancel()
	ref, err := testimage.LoadEcho(ctx, DefaultAddress, ns, opts...)
	if err != nil {
		t.Fatalf("load echo image: %v", err)
	}
	return &fixture{ns: ns, image: ref, e: newTestExecutor(t, ns)}
}

func newTestExecutor(t testing.TB, ns string) *Executor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	logger := slog.New(slog.NewTextHandler(testLogWriter{t}, nil))
	if _, ok := t.(*testing.B); ok {
		logger = slog.New(slog.DiscardHandler) // a benchmark shows every line
	}
	e, err := New(ctx, Config{
		Namespace: ns,
		NodeID:    "node-1",
		// No registry is reachable; a pull that has not failed by now
		// never will.
		PullTimeout: 20 * time.Second,
		LogDir:      t.TempDir(),
		Logger:      logger,
	})
	if err != nil {
		t.Fatalf("new executor: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// testLogWriter sends the executor's log to the test's, which shows it
// only when the test fails or runs with -v.
type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// echoTask is a task running the echo image; its ports are off the
// privileged range so that it also runs as a non-root user, which has no
// capabilities once it execs.
func (f *fixture) echoTask(env ...string) *api.Task {
	return &api.Task{
		Id:          api.NewID(),
		ServiceId:   "svc-" + api.NewID()[:8],
		ServiceName: "web",
		Slot:        2,
		Spec: &api.TaskSpec{Container: &api.ContainerSpec{
			Image: f.image,
			Env:   append([]string{"ECHO_HTTP_PORT=8080", "ECHO_TCP_PORT=7000"}, env...),
		}},
	}
}

func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// controller returns the task's controller and removes its container when
// the test ends.
func (f *fixture) controller(t testing.TB, e *Executor, task *api.Task) exec.Controller {
	t.Helper()
	ctl, err := e.Controller(task)
	if err != nil {
		t.Fatalf("controller: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, err := os.ReadFile(ctl.(*controller).logPath())
			t.Logf("output of task %s (%v):\n%s", task.GetId(), err, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := ctl.Remove(ctx); err != nil {
			t.Errorf("remove task %s: %v", task.GetId(), err)
		}
	})
	return ctl
}

func prepareAndStart(t testing.TB, ctx context.Context, ctl exec.Controller) {
	t.Helper()
	if err := ctl.Prepare(ctx); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
}

// pid returns the pid of the task's process as the host sees it.
func (f *fixture) pid(t testing.TB, ctx context.Context, id string) int {
	t.Helper()
	ctx = f.e.nsContext(ctx)
	ctr, err := f.e.client.LoadContainer(ctx, id)
	if err != nil {
		t.Fatalf("load container %s: %v", id, err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatalf("load task %s: %v", id, err)
	}
	return int(task.Pid())
}

// waitAsync runs Wait in a goroutine the test owns and returns its result
// channel.
func waitAsync(t testing.TB, ctx context.Context, ctl exec.Controller) <-chan error {
	done := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		done <- ctl.Wait(ctx)
	}()
	t.Cleanup(wg.Wait)
	return done
}

func exitCode(t testing.TB, err error) int32 {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("want *exec.ExitError, got %v", err)
	}
	return ee.Code
}

func TestCrashReportsExitCode(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	ctl := f.controller(t, f.e, f.echoTask("ECHO_CRASH_AFTER=100ms"))
	prepareAndStart(t, ctx, ctl)
	if code := exitCode(t, ctl.Wait(ctx)); code != 3 {
		t.Fatalf("exit code = %d, want 3", code)
	}
	// Wait on a process that has ended reports the same status.
	if code := exitCode(t, ctl.Wait(ctx)); code != 3 {
		t.Fatalf("second wait: exit code = %d, want 3", code)
	}
	// An ended process is replaced by Start.
	if err := ctl.Start(ctx); err != nil {
		t.Fatalf("restart ended process: %v", err)
	}
	if code := exitCode(t, ctl.Wait(ctx)); code != 3 {
		t.Fatalf("after restart: exit code = %d, want 3", code)
	}
}

func TestShutdownThenRemove(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	task := f.echoTask()
	ctl := f.controller(t, f.e, task)
	prepareAndStart(t, ctx, ctl)
	if err := ctl.Start(ctx); !errors.Is(err, exec.ErrTaskStarted) {
		t.Fatalf("second start: got %v, want ErrTaskStarted", err)
	}
	// A Go program that gets SIGTERM before it asked for it dies, and as
	// PID 1 of its namespace it cannot die of the signal: it exits 2.
	waitOutput(t, ctx, ctl, "echo listening")
	waited := waitAsync(t, ctx, ctl)

	if err := ctl.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	// echo exits 0 on SIGTERM.
	if err := <-waited; err != nil {
		t.Fatalf("wait after shutdown: %v", err)
	}
	if err := ctl.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown of a stopped task: %v", err)
	}
	if err := ctl.Remove(ctx); err != nil {
		t.Fatalf("remove: %v", err)
	}
	nctx := f.e.nsContext(ctx)
	if _, err := f.e.client.LoadContainer(nctx, task.GetId()); !errdefs.IsNotFound(err) {
		t.Errorf("container after remove: got %v, want not found", err)
	}
	if _, err := f.e.client.SnapshotService(f.e.snapshotter).Stat(nctx, task.GetId()); !errdefs.IsNotFound(err) {
		t.Errorf("snapshot after remove: got %v, want not found", err)
	}
	if err := ctl.Remove(ctx); err != nil {
		t.Errorf("second remove: %v", err)
	}
	if err := ctl.Shutdown(ctx); err != nil {
		t.Errorf("shutdown after remove: %v", err)
	}
}

func TestShutdownKillsAfterGracePeriod(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	task := f.echoTask()
	task.Spec.Container.StopGracePeriod = durationpb.New(300 * time.Millisecond)
	ctl := f.controller(t, f.e, task)
	if err := ctl.Prepare(ctx); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	// As if the image's StopSignal were SIGSTOP: the process neither exits
	// nor can refuse, so only the SIGKILL after the grace period ends it.
	ctr, err := f.e.client.LoadContainer(f.e.nsContext(ctx), task.GetId())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctr.SetLabels(f.e.nsContext(ctx), map[string]string{client.StopSignalLabel: "SIGSTOP"}); err != nil {
		t.Fatal(err)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	waited := waitAsync(t, ctx, ctl)
	if err := ctl.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if code := exitCode(t, <-waited); code != 128+int32(syscall.SIGKILL) {
		t.Fatalf("exit code = %d, want %d (SIGKILL)", code, 128+int32(syscall.SIGKILL))
	}
}

func TestRemoveDuringWait(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	ctl := f.controller(t, f.e, f.echoTask())
	prepareAndStart(t, ctx, ctl)
	waited := waitAsync(t, ctx, ctl)
	if err := ctl.Remove(ctx); err != nil {
		t.Fatalf("remove: %v", err)
	}
	err := <-waited
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait during remove: got %v, want the process's end", err)
	}
}

func TestAdoptAfterRestart(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	task := f.echoTask()
	prepareAndStart(t, ctx, f.controller(t, f.e, task))

	// A new executor and controller, as after shoald restarts.
	e2 := newTestExecutor(t, f.ns)
	ctl2 := f.controller(t, e2, task)
	if err := ctl2.Prepare(ctx); !errors.Is(err, exec.ErrTaskPrepared) {
		t.Fatalf("prepare of an existing container: got %v, want ErrTaskPrepared", err)
	}
	if err := ctl2.Start(ctx); !errors.Is(err, exec.ErrTaskStarted) {
		t.Fatalf("start of a running task: got %v, want ErrTaskStarted", err)
	}
	waited := waitAsync(t, ctx, ctl2)
	if err := syscall.Kill(f.pid(t, ctx, task.GetId()), syscall.SIGKILL); err != nil {
		t.Fatalf("kill process: %v", err)
	}
	if code := exitCode(t, <-waited); code != 137 {
		t.Fatalf("exit code = %d, want 137", code)
	}
}

func TestWaitCancelled(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	ctl := f.controller(t, f.e, f.echoTask())
	prepareAndStart(t, ctx, ctl)
	wctx, cancel := context.WithCancel(ctx)
	waited := waitAsync(t, wctx, ctl)
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("wait with cancelled context: got %v, want context.Canceled", err)
	}
}

func TestImageUnavailable(t *testing.T) {
	f := newFixture(t)
	for _, ref := range []string{
		// Not present, and the "registry" refuses connections on loopback.
		"127.0.0.1:1/shoal/none:1",
		// Not a reference at all.
		"Not//A:Reference",
	} {
		t.Run(ref, func(t *testing.T) {
			ctx := testContext(t)
			task := f.echoTask()
			task.Spec.Container.Image = ref
			ctl := f.controller(t, f.e, task)
			err := ctl.Prepare(ctx)
			if !errors.Is(err, exec.ErrImageUnavailable) {
				t.Fatalf("prepare: got %v, want an error wrapping ErrImageUnavailable", err)
			}
			if !strings.Contains(err.Error(), ref) {
				t.Errorf("error %q does not name the image %q", err, ref)
			}
			if _, err := f.e.client.LoadContainer(f.e.nsContext(ctx), task.GetId()); !errdefs.IsNotFound(err) {
				t.Errorf("container after failed prepare: got %v, want not found", err)
			}
		})
	}
}

// procFile reads a NUL-separated /proc file of pid.
func procFile(t testing.TB, pid int, name string) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

func TestEnvArgsAndUserReachProcess(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name     string
		command  []string
		args     []string
		user     string
		wantArgv []string
		wantUID  string
	}{
		{name: "image entrypoint", wantArgv: []string{"/echo"}, wantUID: "0"},
		{name: "args after entrypoint", args: []string{"--tcp-port", "7007"}, wantArgv: []string{"/echo", "--tcp-port", "7007"}, wantUID: "0"},
		{name: "command replaces entrypoint", command: []string{"/echo", "--udp-port", "9009"}, args: []string{"--tcp-port", "7008"},
			wantArgv: []string{"/echo", "--udp-port", "9009", "--tcp-port", "7008"}, wantUID: "0"},
		{name: "numeric user", user: "1234:1234", wantArgv: []string{"/echo"}, wantUID: "1234"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := testContext(t)
			task := f.echoTask("GREETING=hello world", "EMPTY=")
			c := task.Spec.Container
			c.Command, c.Args, c.User = tt.command, tt.args, tt.user
			ctl := f.controller(t, f.e, task)
			prepareAndStart(t, ctx, ctl)
			pid := f.pid(t, ctx, task.GetId())
			waitExec(t, ctx, pid, "/echo")

			if argv := procFile(t, pid, "cmdline"); !slices.Equal(argv, tt.wantArgv) {
				t.Errorf("argv = %q, want %q", argv, tt.wantArgv)
			}
			env := procFile(t, pid, "environ")
			for _, want := range []string{
				"GREETING=hello world",
				"EMPTY=",
				"ECHO_HTTP_PORT=8080",
				"ECHO_TCP_PORT=7000",
				EnvTaskID + "=" + task.GetId(),
				EnvTaskName + "=web.2." + task.GetId(),
				EnvServiceName + "=web",
				EnvServiceID + "=" + task.GetServiceId(),
				EnvTaskSlot + "=2",
				EnvNodeID + "=node-1",
			} {
				if !slices.Contains(env, want) {
					t.Errorf("environment lacks %q: %q", want, env)
				}
			}
			if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
				t.Errorf("environment lacks the image's PATH: %q", env)
			}
			status := procFile(t, pid, "status")
			if uid := statusField(status[0], "Uid"); uid != tt.wantUID {
				t.Errorf("uid = %q, want %q", uid, tt.wantUID)
			}
		})
	}
}

// waitExec waits until pid runs exe with its arguments in place: Start
// returns once runc has told its init to exec, which may not have
// happened yet, and the kernel switches the executable before it lays
// out argv and the environment.
func waitExec(t testing.TB, ctx context.Context, pid int, exe string) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("process %d ended before it ran %s", pid, exe)
		}
		if err == nil && got == exe {
			environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			if err == nil && len(environ) > 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("process %d runs %q (%v), want %q", pid, got, err, exe)
		case <-tick.C:
		}
	}
}

// waitOutput waits until the task's log has line in it.
func waitOutput(t testing.TB, ctx context.Context, ctl exec.Controller, line string) {
	t.Helper()
	path := ctl.(*controller).logPath()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(out), line) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("task output has no %q: %q (%v)", line, out, err)
		case <-tick.C:
		}
	}
}

// statusField returns the first value of a /proc/<pid>/status field.
func statusField(status, field string) string {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				return f[0]
			}
		}
	}
	return ""
}

func TestSpecFromTask(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	task := f.echoTask()
	task.Spec.Container.Labels = map[string]string{"team": "blue", exec.LabelNode: "spoofed"}
	task.Spec.Container.Dir = "/"
	ctl := f.controller(t, f.e, task)
	if err := ctl.Prepare(ctx); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	nctx := f.e.nsContext(ctx)
	ctr, err := f.e.client.LoadContainer(nctx, task.GetId())
	if err != nil {
		t.Fatal(err)
	}
	labels, err := ctr.Labels(nctx)
	if err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		exec.LabelTask:    task.GetId(),
		exec.LabelService: task.GetServiceId(),
		exec.LabelSlot:    "2",
		exec.LabelNode:    "node-1",
		"team":            "blue",
	} {
		if labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, labels[k], want)
		}
	}
	spec, err := ctr.Spec(nctx)
	if err != nil {
		t.Fatal(err)
	}
	if spec.Hostname != "web.2" {
		t.Errorf("hostname = %q, want web.2", spec.Hostname)
	}
	if !hasNewNamespace(spec, "network") {
		t.Errorf("spec does not ask for a new network namespace: %+v", spec.Linux.Namespaces)
	}
}

// hasNewNamespace reports whether the spec creates a namespace of the type
// rather than joining one.
func hasNewNamespace(spec *oci.Spec, typ string) bool {
	for _, ns := range spec.Linux.Namespaces {
		if string(ns.Type) == typ {
			return ns.Path == ""
		}
	}
	return false
}

func TestContainersListsByLabel(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	running := f.echoTask()
	running.Slot = 1
	prepareAndStart(t, ctx, f.controller(t, f.e, running))
	prepared := f.echoTask()
	prepared.Slot = 7
	if err := f.controller(t, f.e, prepared).Prepare(ctx); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	// A container someone else made in the namespace is not ours.
	nctx := f.e.nsContext(ctx)
	foreign, err := f.e.client.NewContainer(nctx, "not-shoal", client.WithNewSpec())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.Delete(f.e.nsContext(context.Background())) })

	got, err := f.e.Containers(ctx)
	if err != nil {
		t.Fatalf("containers: %v", err)
	}
	slices.SortFunc(got, func(a, b exec.Container) int { return int(a.Slot) - int(b.Slot) })
	want := []exec.Container{
		{ID: running.GetId(), TaskID: running.GetId(), ServiceID: running.GetServiceId(), Slot: 1, Running: true},
		{ID: prepared.GetId(), TaskID: prepared.GetId(), ServiceID: prepared.GetServiceId(), Slot: 7, Running: false},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("containers = %+v, want %+v", got, want)
	}
}

func TestDescribe(t *testing.T) {
	needContainerd(t)
	e := newTestExecutor(t, testNamespace(t))
	d, err := e.Describe(testContext(t))
	if err != nil {
		t.Fatalf("describe: %v", err)
	}
	host, _ := os.Hostname()
	if d.GetHostname() != host || d.GetOs() != "linux" || d.GetArch() == "" {
		t.Errorf("platform = %q %s/%s, want %q linux/<arch>", d.GetHostname(), d.GetOs(), d.GetArch(), host)
	}
	if d.GetNanoCpus() < 1e9 || d.GetMemoryBytes() <= 0 {
		t.Errorf("resources = %d nano CPUs, %d bytes", d.GetNanoCpus(), d.GetMemoryBytes())
	}
	if !strings.HasPrefix(d.GetEngine(), "containerd ") || len(d.GetEngine()) <= len("containerd ") {
		t.Errorf("engine = %q, want containerd <version>", d.GetEngine())
	}
}

func TestNewFailsWithoutContainerd(t *testing.T) {
	// Nothing listens, so any bound will do.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := New(ctx, Config{Address: t.TempDir() + "/no.sock"})
	if err == nil {
		t.Fatal("New with no containerd listening succeeded")
	}
}

func BenchmarkCreateStartRemove(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	for b.Loop() {
		task := f.echoTask()
		ctl, err := f.e.Controller(task)
		if err != nil {
			b.Fatal(err)
		}
		if err := ctl.Prepare(ctx); err != nil {
			b.Fatal(err)
		}
		if err := ctl.Start(ctx); err != nil {
			b.Fatal(err)
		}
		if err := ctl.Remove(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
