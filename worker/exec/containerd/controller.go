package containerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// cleanupTimeout bounds the clean-up of a half-made task after a failed
// Start, which runs even when the caller's context is done: deleting a
// task takes a runc call or two, well under this on a loaded machine.
const cleanupTimeout = 30 * time.Second

// controller drives one task's container. It holds no containerd handles:
// every verb loads what it needs by the task ID, so a controller made
// after a restart adopts the container, and verbs called from different
// goroutines (Shutdown during Wait) do not share state.
type controller struct {
	e    *Executor
	task *api.Task
	id   string
	log  *slog.Logger
}

var _ exec.Controller = (*controller)(nil)

// Prepare makes the image available and creates the container with a new
// rootfs snapshot.
func (c *controller) Prepare(ctx context.Context) (err error) {
	defer func() { err = markUnavailable(err) }()
	if err := c.e.ensureSetUp(ctx); err != nil {
		return fmt.Errorf("prepare task %s: %w", c.id, err)
	}
	ctx = c.e.nsContext(ctx)
	if _, err := c.e.client.LoadContainer(ctx, c.id); err == nil {
		return exec.ErrTaskPrepared
	} else if !errdefs.IsNotFound(err) {
		return fmt.Errorf("look up container of task %s: %w", c.id, err)
	}
	spec := c.task.GetSpec().GetContainer()
	img, err := c.e.image(ctx, spec.GetImage())
	if err != nil {
		return fmt.Errorf("prepare task %s: %w", c.id, err)
	}
	imgSpec, err := img.Spec(ctx)
	if err != nil {
		return fmt.Errorf("prepare task %s: read config of image %s: %w", c.id, img.Name(), err)
	}
	argv, err := processArgs(imgSpec.Config, spec.GetCommand(), spec.GetArgs())
	if err != nil {
		return fmt.Errorf("prepare task %s with image %s: %w", c.id, img.Name(), err)
	}

	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(argv...),
		oci.WithEnv(taskEnv(c.task, c.e.cfg.NodeID)),
		oci.WithHostname(hostname(c.task)),
		// The default spec already asks for a new network namespace; a
		// network attachment is added to it once the task has a pid.
	}
	if c.networked() {
		path, err := c.e.cfg.Network.ResolvConf(c.task)
		if err != nil {
			return fmt.Errorf("prepare task %s: resolver configuration: %w", c.id, err)
		}
		specOpts = append(specOpts, oci.WithMounts([]specs.Mount{{
			Destination: "/etc/resolv.conf", Type: "bind", Source: path, Options: []string{"rbind", "ro"},
		}}))
	}
	if dir := spec.GetDir(); dir != "" {
		specOpts = append(specOpts, oci.WithProcessCwd(dir))
	}
	if user := spec.GetUser(); user != "" {
		name, _, _ := strings.Cut(user, ":")
		specOpts = append(specOpts, oci.WithUser(user), oci.WithAdditionalGIDs(name))
	}
	specOpts = append(specOpts, resourceOpts(c.task, c.e.limitSwap)...)
	opts := []client.NewContainerOpts{
		client.WithImage(img),
		client.WithSnapshotter(c.e.snapshotter),
		client.WithNewSnapshot(c.id, img),
		client.WithContainerLabels(containerLabels(c.task, c.e.cfg.NodeID)),
		client.WithImageStopSignal(img, "SIGTERM"),
		client.WithNewSpec(specOpts...),
	}

	_, err = c.e.client.NewContainer(ctx, c.id, opts...)
	if errdefs.IsAlreadyExists(err) {
		if _, lerr := c.e.client.LoadContainer(ctx, c.id); lerr == nil {
			return exec.ErrTaskPrepared
		}
		// The snapshot outlived a container that was never made (shoald
		// died in between): it is ours, named by the task ID.
		c.log.Warn("removing stale rootfs snapshot", "snapshot", c.id)
		if rerr := c.e.client.SnapshotService(c.e.snapshotter).Remove(ctx, c.id); rerr != nil && !errdefs.IsNotFound(rerr) {
			return fmt.Errorf("create container for task %s: remove stale snapshot: %w", c.id, rerr)
		}
		_, err = c.e.client.NewContainer(ctx, c.id, opts...)
	}
	if errdefs.IsAlreadyExists(err) {
		return exec.ErrTaskPrepared
	}
	if err != nil {
		return fmt.Errorf("create container for task %s: %w", c.id, err)
	}
	c.log.Info("container created", "image", img.Name())
	return nil
}

// Start creates the container's process and starts it.
func (c *controller) Start(ctx context.Context) (err error) {
	defer func() { err = markUnavailable(err) }()
	ctx = c.e.nsContext(ctx)
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if err != nil {
		return fmt.Errorf("start task %s: load container (was it prepared?): %w", c.id, err)
	}
	old, err := ctr.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("start task %s: look up process: %w", c.id, err)
	default:
		st, err := old.Status(ctx)
		switch {
		case errdefs.IsNotFound(err):
		case err != nil:
			return fmt.Errorf("start task %s: process status: %w", c.id, err)
		case alive(st.Status):
			return exec.ErrTaskStarted
		case st.Status == client.Created:
			// An earlier Start made the process and died before starting it
			// (perhaps before connecting it).
			if err := c.attach(ctx, old); err != nil {
				return err
			}
			if err := old.Start(ctx); err != nil {
				return fmt.Errorf("start task %s: %w", c.id, err)
			}
			c.log.Info("started process", "pid", old.Pid())
			return nil
		default:
			// A process that ended cannot be started again: make a new one.
			if _, err := old.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("start task %s: delete ended process: %w", c.id, err)
			}
		}
	}

	t, err := ctr.NewTask(ctx, c.ioCreator())
	if err != nil {
		return fmt.Errorf("start task %s: create process: %w", c.id, err)
	}
	err = c.attach(ctx, t)
	if err == nil {
		err = t.Start(ctx)
	}
	if err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if _, derr := t.Delete(dctx, client.WithProcessKill); derr != nil && !errdefs.IsNotFound(derr) {
			c.log.Warn("delete process that failed to start", "err", derr)
		}
		return fmt.Errorf("start task %s: %w", c.id, err)
	}
	c.log.Info("started process", "pid", t.Pid())
	return nil
}

// listenPoll is how often Listening looks at the process's sockets: a
// few milliseconds of delay at most, and a file read each time.
const listenPoll = 5 * time.Millisecond

var _ exec.Listener = (*controller)(nil)

// Listening watches the TCP sockets of the process's network namespace
// (/proc/PID/net/tcp and tcp6) until one listens.
func (c *controller) Listening(ctx context.Context, max time.Duration) (err error) {
	defer func() { err = markUnavailable(err) }()
	if !c.networked() {
		return nil
	}
	nctx := c.e.nsContext(ctx)
	t, err := c.loadTask(nctx)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(max)
	tick := time.NewTicker(listenPoll)
	defer tick.Stop()
	for {
		if listening(t.Pid()) {
			return nil
		}
		if st, err := t.Status(nctx); err == nil && !alive(st.Status) {
			return exec.ErrExited
		}
		if time.Now().After(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// listening reports whether a socket of pid's network namespace listens
// on TCP.
func listening(pid uint32) bool {
	for _, f := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err == nil && tcpListens(b) {
			return true
		}
	}
	return false
}

// tcpListens reports whether a /proc/net/tcp table has a socket in state
// LISTEN (0A).
func tcpListens(table []byte) bool {
	lines := strings.Split(string(table), "\n")
	for _, l := range lines[1:] { // the first is the header
		if f := strings.Fields(l); len(f) > 3 && f[3] == "0A" {
			return true
		}
	}
	return false
}

// networked reports whether the task gets overlay interfaces.
func (c *controller) networked() bool {
	return c.e.cfg.Network != nil && len(c.task.GetNetworks()) > 0
}

// attach connects a created, not yet started, process to its networks.
func (c *controller) attach(ctx context.Context, t client.Task) error {
	if !c.networked() {
		return nil
	}
	if err := c.e.cfg.Network.Attach(ctx, c.task, fmt.Sprintf("/proc/%d/ns/net", t.Pid())); err != nil {
		return fmt.Errorf("start task %s: connect to networks: %w", c.id, err)
	}
	return nil
}

// ioCreator sends the process's output to its log file, or nowhere.
func (c *controller) ioCreator() cio.Creator {
	if c.e.cfg.LogDir == "" {
		return cio.NullIO
	}
	return cio.LogFile(c.logPath())
}

func (c *controller) logPath() string {
	return filepath.Join(c.e.cfg.LogDir, c.id+".log")
}

// Wait blocks until the process exits; it attaches to a process started
// by an earlier controller as well, and returns at once for one that has
// ended already. A wait that containerd's going away cut short (a restart,
// an outage) is no exit: Wait tries again until containerd answers, then
// waits again on the same process, which its shim kept running (or whose
// exit status the shim kept).
func (c *controller) Wait(ctx context.Context) error {
	backoff := retryMin
	for lost := false; ; {
		err := c.wait(ctx)
		if !isUnavailable(err) || ctx.Err() != nil {
			if lost && ctx.Err() == nil {
				c.log.Info("the process ended; waited on it through the loss of containerd", "err", err)
			}
			return err
		}
		if !lost {
			c.log.Warn("lost containerd while waiting on the process; waiting again once it answers", "err", err)
			lost = true
		}
		if !sleepCtx(ctx, backoff) {
			return ctx.Err()
		}
		backoff = min(2*backoff, retryMax)
	}
}

// wait is one wait on the process.
func (c *controller) wait(ctx context.Context) error {
	nctx := c.e.nsContext(ctx)
	t, err := c.loadTask(nctx)
	if err != nil {
		return fmt.Errorf("wait for task %s: %w", c.id, err)
	}
	exitCh, err := t.Wait(nctx)
	if err != nil {
		return fmt.Errorf("wait for task %s: %w", c.id, err)
	}
	select {
	case st := <-exitCh:
		code, _, err := st.Result()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("wait for task %s: %w", c.id, errgrpc.ToNative(err))
		}
		c.log.Info("process exited", "code", code)
		if code == 0 {
			return nil
		}
		if c.oomKilled(nctx, t) {
			c.log.Info("process was killed for going past its memory limit")
			return &exec.ExitError{Code: int32(code), Cause: exec.ErrOOMKilled}
		}
		return &exec.ExitError{Code: int32(code)}
	case <-ctx.Done():
		return ctx.Err()
	}
}

// oomKilled reports whether the OOM killer ended a process of the task's
// container (see the package function).
func (c *controller) oomKilled(ctx context.Context, t client.Task) bool {
	var path string
	if ctr, err := c.e.client.LoadContainer(ctx, c.id); err == nil {
		if spec, err := ctr.Spec(ctx); err == nil && spec.Linux != nil {
			path = spec.Linux.CgroupsPath
		}
	}
	return oomKilled(ctx, t, path)
}

// errNoProcess is wrapped when the container has no process: it was never
// started, or its process was deleted.
var errNoProcess = errors.New("container has no process")

// loadTask returns the container's process.
func (c *controller) loadTask(ctx context.Context) (client.Task, error) {
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("load container: %w", err)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("%w: %w", errNoProcess, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load process: %w", err)
	}
	return t, nil
}

// Shutdown sends the stop signal (the image's, else SIGTERM), gives the
// process its stop grace period, then kills it.
func (c *controller) Shutdown(ctx context.Context) (err error) {
	defer func() { err = markUnavailable(err) }()
	ctx = c.e.nsContext(ctx)
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shut down task %s: load container: %w", c.id, err)
	}
	t, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shut down task %s: load process: %w", c.id, err)
	}
	st, err := t.Status(ctx)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("shut down task %s: process status: %w", c.id, err)
	}
	if st.Status == client.Stopped {
		return nil
	}
	sig, err := client.GetStopSignal(ctx, ctr, syscall.SIGTERM)
	if err != nil {
		return fmt.Errorf("shut down task %s: stop signal: %w", c.id, err)
	}
	switch {
	case st.Status == client.Created, st.Status == client.Paused, st.Status == client.Pausing:
		// A process that has not started or is frozen cannot act on a
		// polite signal.
		sig = syscall.SIGKILL
	}

	waitCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Registered before the signal so that a quick exit is not missed.
	exitCh, err := t.Wait(waitCtx)
	if err != nil {
		return fmt.Errorf("shut down task %s: %w", c.id, err)
	}
	if err := t.Kill(ctx, sig); err != nil {
		if errdefs.IsNotFound(err) {
			return nil // ended by itself meanwhile
		}
		return fmt.Errorf("shut down task %s: send %v: %w", c.id, sig, err)
	}
	grace := time.NewTimer(stopGracePeriod(c.task))
	defer grace.Stop()
	select {
	case <-exitCh:
		c.log.Info("process stopped", "signal", sig.String())
		return nil
	case <-grace.C:
	case <-ctx.Done():
		return fmt.Errorf("shut down task %s: %w", c.id, ctx.Err())
	}
	c.log.Info("process ignored stop signal for its grace period; killing", "signal", sig.String(), "grace", stopGracePeriod(c.task))
	if err := t.Kill(ctx, syscall.SIGKILL, client.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("shut down task %s: kill: %w", c.id, err)
	}
	select {
	case <-exitCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("shut down task %s: %w", c.id, ctx.Err())
	}
}

// Remove kills and deletes the process, then the container and its
// snapshot, and the log file.
func (c *controller) Remove(ctx context.Context) (err error) {
	defer func() { err = markUnavailable(err) }()
	ctx = c.e.nsContext(ctx)
	if err := c.remove(ctx); err != nil {
		return fmt.Errorf("remove task %s: %w", c.id, err)
	}
	// The task's ends of its veths went with its namespace; the node's
	// ends normally follow, but make sure.
	if c.networked() {
		if err := c.e.cfg.Network.Detach(ctx, c.task); err != nil {
			return fmt.Errorf("remove task %s: %w", c.id, err)
		}
	}
	if c.e.cfg.LogDir != "" {
		if err := removeLogs(c.logPath()); err != nil {
			return fmt.Errorf("remove task %s: %w", c.id, err)
		}
	}
	return nil
}

func (c *controller) remove(ctx context.Context) error {
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load container: %w", err)
	}
	t, err := ctr.Task(ctx, nil)
	switch {
	case errdefs.IsNotFound(err):
	case err != nil:
		return fmt.Errorf("load process: %w", err)
	default:
		if _, err := t.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete process: %w", err)
		}
	}
	if err := ctr.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete container: %w", err)
	}
	c.log.Info("container removed")
	return nil
}
