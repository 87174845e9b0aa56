package manager

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/controlapi"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// leaderPoll is how often leadership is re-checked besides raft's own
// notifications, which it drops when nobody listens in time.
const leaderPoll = 100 * time.Millisecond

// Config sets up a manager.
type Config struct {
	// DataDir is the node's data dir; raft state goes in DataDir/raft.
	DataDir string
	NodeID  string
	Logger  *slog.Logger
	// Dispatcher tunes heartbeats.
	Dispatcher dispatcher.Config
	// Orchestrator tunes restarts and history.
	Orchestrator orchestrator.Config
	// SnapshotThreshold overrides raft's snapshot interval (tests).
	SnapshotThreshold uint64
}

// Manager is a running manager.
type Manager struct {
	cfg        Config
	logger     *slog.Logger
	raft       *state.Node
	control    *controlapi.Server
	dispatcher *dispatcher.Dispatcher
}

// RaftDir is where a node's raft state lives under its data dir.
func RaftDir(dataDir string) string { return filepath.Join(dataDir, "raft") }

// HasState reports whether a data dir holds a manager's state.
func HasState(dataDir string) bool { return state.HasState(RaftDir(dataDir)) }

func open(cfg Config, bootstrap bool) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Dispatcher.Logger == nil {
		cfg.Dispatcher.Logger = cfg.Logger.With("component", "dispatcher")
	}
	// A single manager needs no network for raft; managers that join
	// bring a TLS transport.
	_, transport := raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))
	r, err := state.Open(state.Config{
		Dir: RaftDir(cfg.DataDir), ID: cfg.NodeID, Transport: transport,
		Logger: cfg.Logger, SnapshotThreshold: cfg.SnapshotThreshold,
	}, bootstrap)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, logger: cfg.Logger, raft: r}
	m.control = controlapi.New(r, cfg.NodeID)
	m.dispatcher = dispatcher.New(r, cfg.Dispatcher)
	return m, nil
}

// Init creates a new cluster whose first node is self, a manager.
func Init(ctx context.Context, cfg Config, clusterName string, self *api.Node) (*Manager, error) {
	if HasState(cfg.DataDir) {
		return nil, fmt.Errorf("%s already holds a cluster: use `shoald run` to restart this node, or remove the directory to start over", cfg.DataDir)
	}
	m, err := open(cfg, true)
	if err != nil {
		return nil, err
	}
	if err := m.raft.WaitLeader(ctx); err != nil {
		m.Close()
		return nil, err
	}
	now := timestamppb.Now()
	cluster := &api.Cluster{
		Id:   api.NewID(),
		Meta: &api.Meta{CreatedAt: now},
		Spec: &api.ClusterSpec{
			Name:          clusterName,
			Orchestration: &api.OrchestrationConfig{TaskHistoryLimit: api.DefaultHistory},
			Dispatcher:    &api.DispatcherConfig{HeartbeatPeriod: durationpb.New(dispatcher.DefaultHeartbeatPeriod)},
		},
	}
	self.Meta = &api.Meta{CreatedAt: now}
	if err := m.raft.Propose(ctx, store.Create(cluster), store.Create(self)); err != nil {
		m.Close()
		return nil, fmt.Errorf("store cluster: %w", err)
	}
	return m, nil
}

// Open restarts a manager from its data dir.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	if !HasState(cfg.DataDir) {
		return nil, fmt.Errorf("%s holds no cluster: create one with `shoald init`", cfg.DataDir)
	}
	m, err := open(cfg, false)
	if err != nil {
		return nil, err
	}
	if err := m.raft.WaitLeader(ctx); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

// Register adds the manager's gRPC services to a server.
func (m *Manager) Register(s *grpc.Server) {
	api.RegisterControlServer(s, m.control)
	api.RegisterDispatcherServer(s, m.dispatcher)
}

// State is the raft member (tests and benchmarks).
func (m *Manager) State() *state.Node { return m.raft }

// Run runs the leader's controllers whenever this manager leads, until ctx
// ends.
func (m *Manager) Run(ctx context.Context) error {
	var (
		cancel func()
		wg     sync.WaitGroup
	)
	stop := func() {
		if cancel != nil {
			cancel()
			wg.Wait()
			cancel = nil
			m.logger.Info("stopped leader controllers")
		}
	}
	defer stop()
	tick := time.NewTicker(leaderPoll)
	defer tick.Stop()
	for {
		leading := m.raft.IsLeader()
		switch {
		case leading && cancel == nil:
			if err := m.raft.Raft().Barrier(10 * time.Second).Error(); err != nil {
				m.logger.Warn("barrier after election", "err", err)
				break
			}
			lctx, lcancel := context.WithCancel(ctx)
			cancel = lcancel
			m.logger.Info("leading: starting controllers")
			for _, run := range []func(context.Context){
				m.dispatcher.Run,
				m.runOrchestrator,
				m.runAllocator,
				m.runScheduler,
			} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					run(lctx)
				}()
			}
		case !leading && cancel != nil:
			stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.raft.LeaderCh():
		case <-tick.C:
		}
	}
}

// Close stops the raft member; state stays on disk.
func (m *Manager) Close() error {
	return m.raft.Close()
}
