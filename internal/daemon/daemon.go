package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/worker"
	ctrexec "github.com/shoal-project/shoal/worker/exec/containerd"
)

// Defaults a node starts with.
const (
	DefaultDataDir    = "/var/lib/shoal"
	DefaultSocket     = "/run/shoal/shoald.sock"
	DefaultNamespace  = "shoal"
	DefaultContainerd = "/run/containerd/containerd.sock"
	// stopTimeout bounds a graceful stop of the gRPC server before open
	// streams are cut.
	stopTimeout = 5 * time.Second
	// startTimeout bounds waiting for raft to elect a leader at start.
	startTimeout = 30 * time.Second
)

// Config is a node's configuration, from shoald's flags.
type Config struct {
	DataDir             string
	Socket              string
	ContainerdAddress   string
	ContainerdNamespace string
	// Hostname overrides the node's hostname (lab nodes share a host).
	Hostname        string
	HeartbeatPeriod time.Duration
	Logger          *slog.Logger
	// Ready, if set, is called once the node serves its API.
	Ready func()
}

func (c *Config) defaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.ContainerdAddress == "" {
		c.ContainerdAddress = DefaultContainerd
	}
	if c.ContainerdNamespace == "" {
		c.ContainerdNamespace = DefaultNamespace
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func nodeIDPath(dataDir string) string { return filepath.Join(dataDir, "node-id") }

// lockDataDir makes sure one shoald owns a data dir. The lock goes with
// the process, so a crash never leaves it held.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open data dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another shoald", dir)
	}
	return f, nil
}

// Init creates a new cluster with this node as its first manager and runs
// the node until ctx ends.
func Init(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if manager.HasState(cfg.DataDir) {
		return fmt.Errorf("%s already holds a cluster: use `shoald run` to restart this node, or remove the directory to start over", cfg.DataDir)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	// Check containerd before writing anything, so a failed init leaves
	// nothing behind.
	nodeID := api.NewID()
	exe, err := newExecutor(ctx, cfg, nodeID)
	if err != nil {
		return err
	}
	defer exe.Close()
	desc, err := exe.Describe(ctx)
	if err != nil {
		return fmt.Errorf("describe node: %w", err)
	}
	self := &api.Node{
		Id:            nodeID,
		Role:          api.NodeRole_NODE_ROLE_MANAGER,
		Spec:          &api.NodeSpec{DesiredRole: api.NodeRole_NODE_ROLE_MANAGER, Availability: api.NodeAvailability_NODE_AVAILABILITY_ACTIVE},
		Description:   desc,
		Status:        &api.NodeStatus{State: api.NodeState_NODE_STATE_UNKNOWN},
		ManagerStatus: &api.ManagerStatus{Leader: true, Reachable: true},
	}
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	m, err := manager.Init(startCtx, managerConfig(cfg, nodeID), "shoal", self)
	if err != nil {
		os.RemoveAll(manager.RaftDir(cfg.DataDir))
		return fmt.Errorf("create cluster: %w", err)
	}
	if err := os.WriteFile(nodeIDPath(cfg.DataDir), []byte(nodeID+"\n"), 0o600); err != nil {
		m.Close()
		os.RemoveAll(manager.RaftDir(cfg.DataDir))
		return fmt.Errorf("write node id: %w", err)
	}
	cfg.Logger.Info("cluster created", "node", nodeID, "data_dir", cfg.DataDir)
	return serve(ctx, cfg, nodeID, m, exe)
}

// Run restarts a node from its data dir and runs it until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	b, err := os.ReadFile(nodeIDPath(cfg.DataDir))
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s holds no node: create a cluster with `shoald init`", cfg.DataDir)
	} else if err != nil {
		return fmt.Errorf("read node id: %w", err)
	}
	nodeID := strings.TrimSpace(string(b))
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	exe, err := newExecutor(ctx, cfg, nodeID)
	if err != nil {
		return err
	}
	defer exe.Close()
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	m, err := manager.Open(startCtx, managerConfig(cfg, nodeID))
	if err != nil {
		return err
	}
	return serve(ctx, cfg, nodeID, m, exe)
}

func managerConfig(cfg Config, nodeID string) manager.Config {
	return manager.Config{
		DataDir:    cfg.DataDir,
		NodeID:     nodeID,
		Logger:     cfg.Logger,
		Dispatcher: dispatcher.Config{HeartbeatPeriod: cfg.HeartbeatPeriod},
	}
}

func newExecutor(ctx context.Context, cfg Config, nodeID string) (*executor, error) {
	exe, err := ctrexec.New(ctx, ctrexec.Config{
		Address:   cfg.ContainerdAddress,
		Namespace: cfg.ContainerdNamespace,
		NodeID:    nodeID,
		LogDir:    filepath.Join(cfg.DataDir, "logs"),
		Logger:    cfg.Logger.With("component", "executor"),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w (is containerd running?)", cfg.ContainerdAddress, err)
	}
	return &executor{Executor: exe, hostname: cfg.Hostname}, nil
}

// executor names the node as configured: lab nodes share one host and so
// one kernel hostname.
type executor struct {
	*ctrexec.Executor
	hostname string
}

func (e *executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	d, err := e.Executor.Describe(ctx)
	if err == nil && e.hostname != "" {
		d.Hostname = e.hostname
	}
	return d, err
}

// listenUnix opens the API socket, owner-only: whoever can open it is
// root on this node. A socket file left by a crashed shoald is replaced;
// one that still answers means another shoald runs.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("socket %s is served by another shoald", path)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	return l, nil
}

func serve(ctx context.Context, cfg Config, nodeID string, m *manager.Manager, exe *executor) error {
	defer m.Close()
	l, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	srv := grpc.NewServer()
	m.Register(srv)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("serve API: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		m.Run(ctx)
	}()

	// The local worker talks to the dispatcher through the same gRPC API a
	// remote worker uses.
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		srv.Stop()
		wg.Wait()
		return fmt.Errorf("dial own API: %w", err)
	}
	defer conn.Close()
	agent := worker.New(worker.Config{NodeID: nodeID, Executor: exe, Conn: conn, Logger: cfg.Logger.With("component", "worker")})
	go func() {
		defer wg.Done()
		agent.Run(ctx)
	}()
	cfg.Logger.Info("shoald ready", "node", nodeID, "socket", cfg.Socket)
	if cfg.Ready != nil {
		cfg.Ready()
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(stopTimeout):
		srv.Stop()
	}
	wg.Wait()
	cfg.Logger.Info("shoald stopped; containers keep running", "node", nodeID)
	return runErr
}
