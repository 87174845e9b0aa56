// Package exec is the seam between the worker's agent and a container
// runtime. The agent sees verbs (prepare, start, wait, shut down, remove);
// the runtime behind them (containerd in production, a fake in unit tests)
// is the implementation's business.
package exec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Labels put on every container so that a restarted worker can find the
// containers it made and tell which task each one runs.
const (
	LabelTask    = "io.shoal.task.id"
	LabelService = "io.shoal.service.id"
	LabelSlot    = "io.shoal.task.slot"
	LabelNode    = "io.shoal.node.id"
)

var (
	// ErrTaskPrepared is returned by Prepare when the container already
	// exists: the task was prepared before (for example by an earlier run
	// of shoald) and can be adopted.
	ErrTaskPrepared = errors.New("task already prepared")
	// ErrTaskStarted is returned by Start when the process already runs.
	ErrTaskStarted = errors.New("task already started")
	// ErrImageUnavailable wraps a failure to find or pull the image; the
	// task is rejected rather than failed.
	ErrImageUnavailable = errors.New("image unavailable")
	// ErrExited is returned by Listener.Listening when the process ended
	// before it listened: Wait says how.
	ErrExited = errors.New("process exited")
	// ErrOOMKilled is the Cause of an ExitError when the kernel's OOM
	// killer ended the process (it went past its memory limit). Its text
	// is Docker's word for it, which users search for.
	ErrOOMKilled = errors.New("OOMKilled")
)

// ExitError is returned by Wait when the process ended with a non-zero
// status.
type ExitError struct {
	Code int32
	// Cause explains the exit when the runtime knows more than the code.
	Cause error
}

func (e *ExitError) Error() string {
	if e.Cause != nil {
		return fmt.Sprintf("task: non-zero exit (%d): %v", e.Code, e.Cause)
	}
	return fmt.Sprintf("task: non-zero exit (%d)", e.Code)
}

// Container is a container found in the runtime that carries shoal labels.
type Container struct {
	ID        string
	TaskID    string
	ServiceID string
	Slot      uint64
	// Running is true when the container's process is alive.
	Running bool
}

// Executor runs the containers of one node.
type Executor interface {
	// Describe reports the node's platform, resources and engine.
	Describe(ctx context.Context) (*api.NodeDescription, error)
	// Containers lists the containers this executor made (found by label),
	// running or not.
	Containers(ctx context.Context) ([]Container, error)
	// Controller returns the controller for a task's container, which may
	// already exist in the runtime.
	Controller(t *api.Task) (Controller, error)
}

// Controller drives one task's container. Calls are made by one goroutine
// at a time, in the order Prepare, Start, Wait, then Shutdown and Remove
// (Shutdown and Remove may come at any point, including during Wait from
// another goroutine).
type Controller interface {
	// Prepare makes the image available (pulling it if it is not present)
	// and creates the container. It returns ErrTaskPrepared if the
	// container exists already, and an error wrapping ErrImageUnavailable
	// if the image cannot be had.
	Prepare(ctx context.Context) error
	// Start starts the container's process. It returns ErrTaskStarted if
	// the process runs already.
	Start(ctx context.Context) error
	// Wait blocks until the process exits. It returns nil for status 0 and
	// an *ExitError otherwise; a cancelled ctx returns ctx.Err().
	Wait(ctx context.Context) error
	// Shutdown stops the process: SIGTERM, then SIGKILL once the task's
	// stop grace period has passed. It is a no-op if nothing runs.
	Shutdown(ctx context.Context) error
	// Remove deletes the process, the container and its snapshot. It is a
	// no-op if they are gone.
	Remove(ctx context.Context) error
}

// Listener is an optional ability of a Controller, found by type
// assertion: telling when a started task's process is ready for
// connections, as far as the runtime can see without a health check. The
// agent reports a networked task RUNNING (which makes it a load-balancer
// backend) only then, so that no connection is sent to a process that has
// not opened its port yet, and a process that dies at once is never
// anybody's backend.
type Listener interface {
	// Listening returns nil once a process of the task's container listens
	// on a TCP port, or once max has passed (not every task listens), or
	// at once for a task that is nobody's backend (no networks);
	// ErrExited when the process ended first.
	Listening(ctx context.Context, max time.Duration) error
}

// ImageLoader is an optional ability of an Executor, found by type
// assertion: loading the image tarballs the managers distribute (`shoalctl
// image load`), so that tasks can use them without a registry.
type ImageLoader interface {
	// HasImage reports whether every name of img refers to the image
	// loaded from img's tarball (not merely to an image of that name).
	HasImage(ctx context.Context, img *api.Image) (bool, error)
	// LoadImage imports img's tarball, read from r, and returns the names
	// it created. It reads r to its end, and the images count as loaded
	// from img (see HasImage) only if r ended without an error: a reader
	// that checks the tarball's digest at its end can refuse the import.
	LoadImage(ctx context.Context, img *api.Image, r io.Reader) ([]string, error)
}

// Prober is an optional ability of a Controller, found by type assertion:
// running the task's health check inside its container. It runs one check
// at a time; the agent keeps the schedule (interval, start period,
// retries) and the task's health. A Controller without it runs tasks
// without health checks.
type Prober interface {
	// Healthcheck returns the health check the task runs: its spec's
	// merged over its image's HEALTHCHECK as Docker merges them, with
	// every default filled in; nil when it has none (neither sets one, or
	// the test is NONE). It needs the container Prepare made.
	Healthcheck(ctx context.Context) (*api.HealthConfig, error)
	// Probe runs hc's test once in the running container and returns nil
	// when it exited with status 0. Otherwise the error says why, for the
	// task's status: the status and the start of the output, a check that
	// outlived hc's timeout (it is killed), or one that could not run. The
	// check's process is gone when Probe returns.
	Probe(ctx context.Context, hc *api.HealthConfig) error
}

// Network is the node's network agent as an executor needs it: it gives a
// task's container its overlay interfaces and its resolver configuration.
// Executors call it only for tasks with network attachments.
type Network interface {
	// ResolvConf returns the path of a file to mount at the container's
	// /etc/resolv.conf, pointing at the node's embedded resolver.
	ResolvConf(t *api.Task) (string, error)
	// Attach gives the task, whose network namespace is at netnsPath, one
	// interface per attachment. The executor calls it after the process
	// exists and before it starts, so the process never runs unconnected.
	Attach(ctx context.Context, t *api.Task, netnsPath string) error
	// Detach removes what Attach made on the node's side.
	Detach(ctx context.Context, t *api.Task) error
}
