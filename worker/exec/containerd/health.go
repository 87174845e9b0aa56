package containerd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/worker/exec"
)

// maxProbeOutput is how much of a check's output is kept for the task's
// status, as Docker keeps: enough for an error message, not a log.
const maxProbeOutput = 4096

// probeOutputDrain bounds the wait for the rest of an ended check's
// output: the pipes of a process that exited empty in microseconds.
const probeOutputDrain = time.Second

// probeShell runs a CMD-SHELL test, as Docker does on Linux.
var probeShell = []string{"/bin/sh", "-c"}

var _ exec.Prober = (*controller)(nil)

// imageHealthcheck reads the HEALTHCHECK of an image's config; nil when it
// has none.
func imageHealthcheck(ctx context.Context, img client.Image) (*api.HealthConfig, error) {
	desc, err := img.Config(ctx)
	if err != nil {
		return nil, fmt.Errorf("config of image %s: %w", img.Name(), err)
	}
	blob, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		return nil, fmt.Errorf("read config of image %s: %w", img.Name(), err)
	}
	return parseImageHealthcheck(blob)
}

// parseImageHealthcheck takes the health check out of an image config
// blob; nil when it has none.
func parseImageHealthcheck(blob []byte) (*api.HealthConfig, error) {
	h, err := image.ConfigHealthcheck(blob)
	if err != nil || h == nil {
		return nil, err
	}
	optional := func(d time.Duration) *durationpb.Duration {
		if d == 0 {
			return nil
		}
		return durationpb.New(d)
	}
	return &api.HealthConfig{
		Test:        h.Test,
		Interval:    optional(h.Interval),
		Timeout:     optional(h.Timeout),
		StartPeriod: optional(h.StartPeriod),
		Retries:     int32(h.Retries),
	}, nil
}

// effectiveHealthcheck is the health check a task runs, as Docker decides
// it: the spec's fields over the image's (an empty test, an unset
// duration, retries 0 take the image's), then Docker's defaults. nil when
// there is no test, or it is NONE.
func effectiveHealthcheck(spec, image *api.HealthConfig) *api.HealthConfig {
	hc := &api.HealthConfig{}
	if image != nil {
		hc = proto.Clone(image).(*api.HealthConfig)
	}
	if spec != nil {
		if len(spec.GetTest()) > 0 {
			hc.Test = spec.GetTest()
		}
		if spec.GetInterval() != nil {
			hc.Interval = spec.GetInterval()
		}
		if spec.GetTimeout() != nil {
			hc.Timeout = spec.GetTimeout()
		}
		if spec.GetStartPeriod() != nil {
			hc.StartPeriod = spec.GetStartPeriod()
		}
		if spec.GetRetries() != 0 {
			hc.Retries = spec.GetRetries()
		}
	}
	if len(hc.GetTest()) == 0 || hc.GetTest()[0] == api.HealthTestNone {
		return nil
	}
	if hc.GetInterval().AsDuration() <= 0 {
		hc.Interval = durationpb.New(api.DefaultHealthInterval)
	}
	if hc.GetTimeout().AsDuration() <= 0 {
		hc.Timeout = durationpb.New(api.DefaultHealthTimeout)
	}
	if hc.GetStartPeriod().AsDuration() < 0 || hc.GetStartPeriod() == nil {
		hc.StartPeriod = durationpb.New(0)
	}
	if hc.GetRetries() <= 0 {
		hc.Retries = api.DefaultHealthRetries
	}
	return hc
}

// probeArgs is the argv of a check's process: CMD runs its words as they
// are, CMD-SHELL its command through the shell.
func probeArgs(test []string) ([]string, error) {
	if len(test) < 2 {
		return nil, fmt.Errorf("health check test %q has no command", test)
	}
	switch test[0] {
	case api.HealthTestCmd:
		return test[1:], nil
	case api.HealthTestShell:
		return append(append([]string(nil), probeShell...), test[1]), nil
	}
	return nil, fmt.Errorf("health check test %q: the first word must be CMD or CMD-SHELL", test)
}

// Healthcheck is the task's spec's health check merged over the one of
// the image its container was made from.
func (c *controller) Healthcheck(ctx context.Context) (hc *api.HealthConfig, err error) {
	defer func() { err = markUnavailable(err) }()
	spec := c.task.GetSpec().GetContainer().GetHealthcheck()
	if test := spec.GetTest(); len(test) > 0 && test[0] == api.HealthTestNone {
		return nil, nil
	}
	ctx = c.e.nsContext(ctx)
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if err != nil {
		return nil, fmt.Errorf("health check of task %s: load container: %w", c.id, err)
	}
	img, err := ctr.Image(ctx)
	if err != nil {
		return nil, fmt.Errorf("health check of task %s: image: %w", c.id, err)
	}
	fromImage, err := imageHealthcheck(ctx, img)
	if err != nil {
		return nil, fmt.Errorf("health check of task %s: %w", c.id, err)
	}
	return effectiveHealthcheck(spec, fromImage), nil
}

// Probe runs the check as an extra process of the container's task, with
// the container's process settings (user, environment, working directory,
// capabilities), and deletes that process whatever happens. A ctx that
// ends cuts the check short and is what Probe then returns.
func (c *controller) Probe(ctx context.Context, hc *api.HealthConfig) error {
	err := c.probe(c.e.nsContext(ctx), hc)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return markUnavailable(err)
}

func (c *controller) probe(ctx context.Context, hc *api.HealthConfig) error {
	argv, err := probeArgs(hc.GetTest())
	if err != nil {
		return err
	}
	t, err := c.loadTask(ctx)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	ctr, err := c.e.client.LoadContainer(ctx, c.id)
	if err != nil {
		return fmt.Errorf("health check: load container: %w", err)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return fmt.Errorf("health check: container spec: %w", err)
	}
	if spec.Process == nil {
		return errors.New("health check: the container's spec has no process")
	}
	ps := *spec.Process
	ps.Args = argv
	ps.Terminal = false
	ps.ConsoleSize = nil

	// The process is made and started, and waited for, under a context
	// of its own: a start cut short by ctx could leave a process the shim
	// starts after it was deleted. ctx only ends the wait for its exit.
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	sctx, cancelStart := context.WithTimeout(pctx, cleanupTimeout)
	defer cancelStart()
	out := &probeOutput{}
	p, err := t.Exec(sctx, probeExecID(), &ps, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return fmt.Errorf("health check: create process: %w", err)
	}
	defer c.deleteProbe(ctx, p)
	exitCh, err := p.Wait(pctx)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if err := p.Start(sctx); err != nil {
		return fmt.Errorf("health check: run %q: %w", argv, err)
	}
	timeout := hc.GetTimeout().AsDuration()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case st := <-exitCh:
		code, _, err := st.Result()
		if err != nil {
			return fmt.Errorf("health check: wait: %w", err)
		}
		c.drainOutput(p)
		if code != 0 {
			return fmt.Errorf("health check exited %d: %s", code, out)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("health check timed out after %v", timeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deleteProbe deletes a check's process, killing it first if it still
// runs (it timed out, or the caller gave up), even when ctx is done.
func (c *controller) deleteProbe(ctx context.Context, p client.Process) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	_, err := p.Delete(dctx)
	if errdefs.IsFailedPrecondition(err) {
		c.kill(dctx, p)
		_, err = p.Delete(dctx)
	}
	if err != nil && !errdefs.IsNotFound(err) {
		c.log.Warn("delete health check process", "err", err)
	}
}

// drainOutput waits until an ended check's output has been copied, or
// for probeOutputDrain: a child the check left behind may hold its stdout
// open. Deleting the process (deferred by Probe) ends the copy, and with
// it this goroutine.
func (c *controller) drainOutput(p client.Process) {
	drained := make(chan struct{})
	go func() {
		p.IO().Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(probeOutputDrain):
	}
}

// kill ends a check's process and waits until it has, or ctx ends. Its
// own wait, registered before the signal: the check's wait may have ended
// with the check's context.
func (c *controller) kill(ctx context.Context, p client.Process) {
	exitCh, err := p.Wait(ctx)
	if err != nil {
		c.log.Warn("kill health check process: wait", "err", err)
		return
	}
	if err := p.Kill(ctx, syscall.SIGKILL); err != nil && !errdefs.IsNotFound(err) {
		c.log.Warn("kill health check process", "err", err)
		return
	}
	select {
	case <-exitCh:
	case <-ctx.Done():
	}
}

// probeExecID names a check's process; containerd wants exec ids unique
// within the task.
func probeExecID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "health-" + hex.EncodeToString(b[:])
}

// probeOutput keeps the start of a check's stdout and stderr, which are
// copied in by two goroutines.
type probeOutput struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (o *probeOutput) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if room := maxProbeOutput - o.buf.Len(); room > 0 {
		o.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// String is the output on one line, its lines joined with "; ": it ends up
// in the task's error, which tables show on one line.
func (o *probeOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var lines []string
	for l := range strings.Lines(o.buf.String()) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return "(no output)"
	}
	return strings.Join(lines, "; ")
}
