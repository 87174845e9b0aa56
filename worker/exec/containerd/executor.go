package containerd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/identifiers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// Defaults for Config fields left empty.
const (
	DefaultAddress   = "/run/containerd/containerd.sock"
	DefaultNamespace = "shoal"
	// DefaultPullTimeout bounds a pull so that a registry that hangs turns
	// into a rejected task rather than a task stuck in PREPARING; two
	// minutes lets a few hundred MB come down a slow link.
	DefaultPullTimeout = 2 * time.Minute
)

// dialTimeout bounds New's first call to containerd: a local socket answers
// in milliseconds, and a daemon that does not answer in this long is
// better reported than waited for.
const dialTimeout = 10 * time.Second

// connectTimeout bounds one attempt to connect to containerd's socket.
// containerd's dialer waits for a missing socket (containerd stopped
// removes it) until then, and calls wait for that attempt: past it they
// fail as unavailable, which the agent retries, rather than hang. A local
// socket connects in microseconds.
const connectTimeout = 2 * time.Second

// Config says which containerd to use and how.
type Config struct {
	// Address is containerd's socket; DefaultAddress when empty.
	Address string
	// Namespace is the containerd namespace holding this node's
	// containers; DefaultNamespace when empty. One per node, so that
	// several nodes can share one containerd.
	Namespace string
	// NodeID is put in every container's exec.LabelNode label and in the
	// SHOAL_NODE_ID variable.
	NodeID string
	// Snapshotter is the snapshotter for images and rootfs; containerd's
	// default (overlayfs) when empty.
	Snapshotter string
	// PullTimeout bounds one image pull; DefaultPullTimeout when zero.
	PullTimeout time.Duration
	// LogDir, when set, receives each task's stdout and stderr in
	// <LogDir>/<task id>.log. When empty the output is discarded.
	LogDir string
	// LogMaxSize caps a task's log file in bytes; it is rotated past
	// that (see logRotator). DefaultLogMaxSize when zero.
	LogMaxSize int64
	// LogMaxFiles is how many files a task's log may span, the live one
	// included (1: no older parts kept). DefaultLogMaxFiles when zero.
	LogMaxFiles int
	// Logger receives the executor's logs; slog.Default() when nil.
	Logger *slog.Logger
	// Network, when set, connects tasks that have network attachments:
	// their resolv.conf is mounted from it, and their interfaces are made
	// between creating the process and starting it.
	Network exec.Network
	// WaitForContainerd makes New succeed while containerd does not
	// answer (it is restarting, or down): the executor finishes its set-up
	// when containerd first answers, and until then its verbs fail with
	// exec.ErrRuntimeUnavailable. A restarted node so keeps its session
	// with the managers, and its tasks as they are, through an outage.
	// Without it New fails, for a node that must not start without a
	// runtime (one that founds or joins a cluster).
	WaitForContainerd bool
}

func (c Config) withDefaults() Config {
	if c.Address == "" {
		c.Address = DefaultAddress
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.PullTimeout <= 0 {
		c.PullTimeout = DefaultPullTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LogMaxSize == 0 {
		c.LogMaxSize = DefaultLogMaxSize
	}
	if c.LogMaxFiles == 0 {
		c.LogMaxFiles = DefaultLogMaxFiles
	}
	return c
}

// Executor runs one node's tasks in one containerd namespace.
type Executor struct {
	cfg    Config
	client *client.Client
	log    *slog.Logger
	// limitSwap: the host's cgroups can cap swap, so a memory limit
	// covers it (see resourceOpts).
	limitSwap bool

	// mu guards the set-up, done once containerd first answers.
	mu    sync.Mutex
	setUp bool
	// snapshotter is resolved once, so that images are unpacked into and
	// snapshots removed from the one containers are made in. Read it only
	// after ensureSetUp succeeded.
	snapshotter string
	// engine is the version containerd last gave, for Describe during an
	// outage.
	engine string
	// stopLogs stops the log rotator; logsDone is closed when it has.
	stopLogs chan struct{}
	logsDone chan struct{}
}

var _ exec.Executor = (*Executor)(nil)

// New dials containerd and checks that it answers.
func New(ctx context.Context, cfg Config) (*Executor, error) {
	cfg = cfg.withDefaults()
	if err := identifiers.Validate(cfg.Namespace); err != nil {
		return nil, fmt.Errorf("containerd namespace %q: %w", cfg.Namespace, err)
	}
	if cfg.LogMaxSize < 0 || cfg.LogMaxFiles < 0 {
		return nil, fmt.Errorf("task log limits: max size %d and max files %d must not be negative", cfg.LogMaxSize, cfg.LogMaxFiles)
	}
	if cfg.LogDir != "" {
		if !filepath.IsAbs(cfg.LogDir) {
			return nil, fmt.Errorf("log dir %q: must be an absolute path (the shim opens it)", cfg.LogDir)
		}
		if err := os.MkdirAll(cfg.LogDir, 0o750); err != nil {
			return nil, fmt.Errorf("create log dir: %w", err)
		}
	}
	c, err := client.New(cfg.Address,
		client.WithDefaultNamespace(cfg.Namespace),
		client.WithTimeout(dialTimeout),
		// gRPC's reconnect back-off would otherwise grow to dialTimeout
		// while containerd is down, and leave a containerd that came back
		// unused for that long.
		client.WithExtraDialOpts([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: retryMin, Multiplier: 1.6, Jitter: 0.2, MaxDelay: retryMax},
			MinConnectTimeout: connectTimeout,
		})}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", cfg.Address, err)
	}
	e := &Executor{
		cfg:       cfg,
		client:    c,
		log:       cfg.Logger.With("namespace", cfg.Namespace, "node", cfg.NodeID),
		limitSwap: canLimitSwap(),
	}
	if cfg.LogDir != "" {
		// The rotator works on the files the shims write: it runs
		// whether containerd answers or not.
		rot := &logRotator{dir: cfg.LogDir, maxSize: cfg.LogMaxSize, maxFiles: cfg.LogMaxFiles, logger: e.log}
		e.stopLogs, e.logsDone = make(chan struct{}), make(chan struct{})
		go func() {
			defer close(e.logsDone)
			rot.run(e.stopLogs)
		}()
	}
	vctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if err := e.ensureSetUp(vctx); err != nil {
		// A deadline here is containerd's dialer still waiting for a
		// socket that is not there.
		if cfg.WaitForContainerd && (isUnavailable(err) || status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded)) {
			e.log.Warn("containerd does not answer; running without it until it does", "address", cfg.Address, "err", err)
			return e, nil
		}
		e.Close()
		return nil, err
	}
	return e, nil
}

// ensureSetUp makes the node's namespace and resolves the snapshotter,
// once: New does it, or the first verb after containerd came back. While
// containerd does not answer it fails with exec.ErrRuntimeUnavailable.
func (e *Executor) ensureSetUp(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.setUp {
		return nil
	}
	c, cfg := e.client, e.cfg
	v, err := c.Version(e.nsContext(ctx))
	if err != nil {
		return markUnavailable(fmt.Errorf("containerd at %s does not answer: %w", cfg.Address, err))
	}
	e.engine = v.Version
	// Created up front so that default-runtime and default-snapshotter
	// look-ups, which read the namespace's labels, find it.
	if err := c.NamespaceService().Create(ctx, cfg.Namespace, nil); err != nil && !errdefs.IsAlreadyExists(err) {
		return markUnavailable(fmt.Errorf("create containerd namespace %s: %w", cfg.Namespace, err))
	}
	snapshotter := cfg.Snapshotter
	if snapshotter == "" {
		label, err := c.GetLabel(e.nsContext(ctx), defaults.DefaultSnapshotterNSLabel)
		if err != nil {
			return markUnavailable(fmt.Errorf("default snapshotter of namespace %s: %w", cfg.Namespace, err))
		}
		snapshotter = label
		if snapshotter == "" {
			snapshotter = defaults.DefaultSnapshotter
		}
	}
	e.snapshotter, e.setUp = snapshotter, true
	e.log.Debug("connected to containerd", "snapshotter", snapshotter, "address", cfg.Address, "version", v.Version)
	return nil
}

// Close stops rotating task logs and closes the connection to
// containerd. Containers keep running.
func (e *Executor) Close() error {
	if e.stopLogs != nil {
		close(e.stopLogs)
		<-e.logsDone
		e.stopLogs = nil
	}
	return e.client.Close()
}

// nsContext puts the node's namespace on ctx; every containerd call needs
// one.
func (e *Executor) nsContext(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, e.cfg.Namespace)
}

// Describe reports the node's platform, resources and engine. While
// containerd does not answer, the engine is the version it last gave (or
// says it does not answer): the node is still there, and so are its
// tasks.
func (e *Executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	engine := "containerd "
	if v, err := e.client.Version(e.nsContext(ctx)); err == nil {
		engine += v.Version
		e.mu.Lock()
		e.engine = v.Version
		e.mu.Unlock()
	} else if isUnavailable(err) {
		e.mu.Lock()
		last := e.engine
		e.mu.Unlock()
		if last == "" {
			last = "(not answering)"
		}
		engine += last
	} else {
		return nil, fmt.Errorf("containerd version: %w", err)
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("hostname: %w", err)
	}
	mem, err := readMemTotal(procMeminfo)
	if err != nil {
		return nil, err
	}
	return &api.NodeDescription{
		Hostname:    host,
		Os:          runtime.GOOS,
		Arch:        runtime.GOARCH,
		NanoCpus:    int64(runtime.NumCPU()) * 1e9,
		MemoryBytes: mem,
		Engine:      engine,
	}, nil
}

// taskLabelFilter matches containers that carry the task label, whatever
// its value.
var taskLabelFilter = fmt.Sprintf("labels.%q", exec.LabelTask)

// Containers lists the containers of this namespace that carry the task
// label, with whether their process is alive.
func (e *Executor) Containers(ctx context.Context) (_ []exec.Container, err error) {
	defer func() { err = markUnavailable(err) }()
	ctx = e.nsContext(ctx)
	cs, err := e.client.Containers(ctx, taskLabelFilter)
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]exec.Container, 0, len(cs))
	for _, c := range cs {
		labels, err := c.Labels(ctx)
		if errdefs.IsNotFound(err) {
			continue // removed while we listed
		}
		if err != nil {
			return nil, fmt.Errorf("labels of container %s: %w", c.ID(), err)
		}
		running, err := isRunning(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("status of container %s: %w", c.ID(), err)
		}
		out = append(out, containerFromLabels(c.ID(), labels, running))
	}
	return out, nil
}

// isRunning reports whether a container's process is alive.
func isRunning(ctx context.Context, c client.Container) (bool, error) {
	t, err := c.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	st, err := t.Status(ctx)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return alive(st.Status), nil
}

// alive is true for the states in which the process exists and has been
// started.
func alive(s client.ProcessStatus) bool {
	switch s {
	case client.Running, client.Paused, client.Pausing:
		return true
	}
	return false
}

// errInvalidTask is wrapped by Controller for a task it cannot run.
var errInvalidTask = errors.New("invalid task")

// Controller returns the controller for a task's container. The container
// may exist already (made by an earlier run of shoald); the controller
// finds it by the task ID.
func (e *Executor) Controller(t *api.Task) (exec.Controller, error) {
	if t == nil {
		return nil, fmt.Errorf("%w: nil task", errInvalidTask)
	}
	if err := identifiers.Validate(t.GetId()); err != nil {
		return nil, fmt.Errorf("%w: task id %q cannot name a container: %v", errInvalidTask, t.GetId(), err)
	}
	if t.GetSpec().GetContainer().GetImage() == "" {
		return nil, fmt.Errorf("%w: task %s has no image", errInvalidTask, t.GetId())
	}
	if err := validateEnv(t.GetSpec().GetContainer().GetEnv()); err != nil {
		return nil, fmt.Errorf("%w: task %s: %v", errInvalidTask, t.GetId(), err)
	}
	return &controller{
		e:    e,
		task: t,
		id:   t.GetId(),
		log:  e.log.With("task", t.GetId(), "service", t.GetServiceId()),
	}, nil
}
