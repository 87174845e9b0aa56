package containerd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"

	"github.com/shoal-project/shoal/worker/exec"
)

// Tests of the executor through a containerd outage. They never touch the
// machine's containerd (other suites use it): the executor under test
// dials a unix socket the test serves, which forwards to containerd, and
// which the test cuts (every connection closed, the socket gone, as when
// containerd stops or restarts) and restores.

// socketProxy forwards a unix socket to containerd's.
type socketProxy struct {
	path, target string

	mu    sync.Mutex
	lis   net.Listener
	conns []net.Conn
}

func newSocketProxy(t *testing.T) *socketProxy {
	t.Helper()
	p := &socketProxy{path: filepath.Join(t.TempDir(), "containerd.sock"), target: DefaultAddress}
	p.restore(t)
	t.Cleanup(p.cut)
	return p
}

// restore serves the socket again: containerd is back.
func (p *socketProxy) restore(t *testing.T) {
	t.Helper()
	lis, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.lis = lis
	p.mu.Unlock()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { io.Copy(up, c); up.Close(); c.Close() }()
			go func() { io.Copy(c, up); up.Close(); c.Close() }()
		}
	}()
}

// cut closes every connection and removes the socket: containerd is gone.
func (p *socketProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lis != nil {
		p.lis.Close() // unlinks the socket
		p.lis = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// executorAt is an executor of the fixture's namespace that reaches
// containerd at addr.
func (f *fixture) executorAt(t *testing.T, addr string) *Executor {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	e, err := New(ctx, Config{
		Address: addr, Namespace: f.ns, NodeID: "node-1", LogDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(testLogWriter{t}, nil)), WaitForContainerd: true,
	})
	if err != nil {
		t.Fatalf("new executor at %s: %v", addr, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// processStatus is the status of a task's process, asked of containerd
// directly.
func (f *fixture) processStatus(t *testing.T, ctx context.Context, id string) client.ProcessStatus {
	t.Helper()
	nctx := f.e.nsContext(ctx)
	ctr, err := f.e.client.LoadContainer(nctx, id)
	if err != nil {
		t.Fatalf("load container %s: %v", id, err)
	}
	task, err := ctr.Task(nctx, nil)
	if err != nil {
		t.Fatalf("load task %s: %v", id, err)
	}
	st, err := task.Status(nctx)
	if err != nil {
		t.Fatalf("status of task %s: %v", id, err)
	}
	return st.Status
}

// TestWaitSurvivesContainerdOutage: containerd goes away under a running
// task, for a while, and comes back. Wait does not return (the broken
// wait is no exit), the process runs on, verbs fail with
// exec.ErrRuntimeUnavailable meanwhile, and once containerd answers Wait
// is on the same process again: its real end is reported.
func TestWaitSurvivesContainerdOutage(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	proxy := newSocketProxy(t)
	e := f.executorAt(t, proxy.path)
	task := f.echoTask()
	ctl := f.controller(t, e, task)
	prepareAndStart(t, ctx, ctl)
	waitOutput(t, ctx, ctl, "echo listening")
	pid := f.pid(t, ctx, task.GetId())
	waited := waitAsync(t, ctx, ctl)

	for round, outage := range []time.Duration{time.Second, 3 * time.Second} {
		proxy.cut()
		select {
		case err := <-waited:
			t.Fatalf("outage %d: Wait returned %v while containerd was away; want it to wait on", round, err)
		case <-time.After(outage):
		}
		if _, err := e.Containers(ctx); !errors.Is(err, exec.ErrRuntimeUnavailable) {
			t.Errorf("outage %d: Containers: %v, want exec.ErrRuntimeUnavailable", round, err)
		}
		if err := ctl.Shutdown(ctx); !errors.Is(err, exec.ErrRuntimeUnavailable) {
			t.Errorf("outage %d: Shutdown: %v, want exec.ErrRuntimeUnavailable", round, err)
		}
		if d, err := e.Describe(ctx); err != nil || !strings.HasPrefix(d.GetEngine(), "containerd ") {
			t.Errorf("outage %d: Describe: %v, %v; want the node described", round, d, err)
		}
		if st := f.processStatus(t, ctx, task.GetId()); st != client.Running {
			t.Fatalf("outage %d: the process is %s, want it running on", round, st)
		}
		proxy.restore(t)
		select {
		case err := <-waited:
			t.Fatalf("outage %d: Wait returned %v after containerd came back; the process still runs", round, err)
		case <-time.After(2 * time.Second):
		}
	}
	if got := f.pid(t, ctx, task.GetId()); got != pid {
		t.Fatalf("pid %d after the outages, want %d: the same process", got, pid)
	}
	if cs, err := e.Containers(ctx); err != nil || len(cs) != 1 || !cs[0].Running {
		t.Fatalf("Containers after the outages: %v, %v; want the one running container", cs, err)
	}

	// Its end, made behind the executor's back, reaches the Wait that
	// began before the outages.
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		if code := exitCode(t, err); code != 137 {
			t.Fatalf("exit code %d, want 137 (SIGKILL)", code)
		}
	case <-ctx.Done():
		t.Fatal("Wait did not see the process end")
	}
}

// TestNewWaitsForContainerd: an executor made while containerd is down
// (shoald restarting during an outage) exists, describes the node, fails
// its verbs with exec.ErrRuntimeUnavailable, and works once containerd
// answers.
func TestNewWaitsForContainerd(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	proxy := newSocketProxy(t)
	proxy.cut()
	e := f.executorAt(t, proxy.path)
	if d, err := e.Describe(ctx); err != nil || d.GetEngine() != "containerd (not answering)" {
		t.Errorf("Describe: %v, %v; want the node, its engine not answering", d, err)
	}
	task := f.echoTask()
	ctl := f.controller(t, e, task)
	if err := ctl.Prepare(ctx); !errors.Is(err, exec.ErrRuntimeUnavailable) {
		t.Fatalf("Prepare while containerd is down: %v, want exec.ErrRuntimeUnavailable", err)
	}
	proxy.restore(t)
	var err error
	for range 50 { // gRPC redials within its back-off (retryMax)
		if err = ctl.Prepare(ctx); !errors.Is(err, exec.ErrRuntimeUnavailable) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("Prepare once containerd answers: %v", err)
	}
	if err := ctl.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if cs, err := e.Containers(ctx); err != nil || len(cs) != 1 || !cs[0].Running {
		t.Fatalf("Containers: %v, %v; want the running container", cs, err)
	}
}
