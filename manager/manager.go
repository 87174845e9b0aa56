package manager

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/controlapi"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
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
	// Transport carries raft; an in-memory one (a lone manager, tests)
	// when nil.
	Transport raft.Transport
	// Identify names the node calling an RPC, from its certificate.
	Identify func(ctx context.Context) (string, error)
	// ForceNewCluster makes this manager the only raft member (see
	// docs/recovery.md); the other managers become workers in the store.
	ForceNewCluster bool
	// Dial reaches another manager's cluster port (by its advertise
	// address) as this node. A follower sends through it the proposals it
	// takes and the control calls that allocate (see controlServer), and
	// every manager copies image tarballs from the others. Without it
	// (a lone manager, tests) a follower can take no writes and allocates
	// itself, and only tarballs loaded through this manager are kept.
	Dial Dialer
	// UnlockKey is the cluster's unlock key (state.ParseUnlockKey), needed
	// to open a manager whose keys are locked (autolock).
	UnlockKey []byte
	// OnUnlockKey, if set, is called with the cluster's unlock key (nil
	// when autolock is off) once this manager's raft keys follow it: at
	// the first round of Run and after every change. The daemon seals the
	// node's private key with it.
	OnUnlockKey func(key []byte)
}

// Dialer returns a connection to the manager at addr; the caller does not
// close it (the dialer may cache it).
type Dialer func(ctx context.Context, addr string) (grpc.ClientConnInterface, error)

// Manager is a running manager.
type Manager struct {
	cfg        Config
	logger     *slog.Logger
	raft       *state.Node
	control    *controlapi.Server
	dispatcher *dispatcher.Dispatcher
	ca         *ca.Server
	membership *membership
	images     *imageReplicator
	// appliedKey is the unlock key applied last (applyUnlockKey), valid
	// once keyApplied.
	appliedKey []byte
	keyApplied bool
	// networks makes every network allocation on this manager: the
	// control API's (networks, VIPs, ports), the allocator controller's
	// (task and node addresses) and Init's (the ingress network).
	networks *stored.Allocator
}

// RaftDir is where a node's raft state lives under its data dir.
func RaftDir(dataDir string) string { return filepath.Join(dataDir, "raft") }

// HasState reports whether a data dir holds a manager's state.
func HasState(dataDir string) bool { return state.HasState(RaftDir(dataDir)) }

// Locked reports whether a data dir's manager state needs the cluster's
// unlock key to open (autolock).
func Locked(dataDir string) bool { return state.Locked(RaftDir(dataDir)) }

// ErrLocked and ErrWrongUnlockKey are Open's errors for a locked manager
// opened without its unlock key, or with another one.
var (
	ErrLocked         = state.ErrLocked
	ErrWrongUnlockKey = state.ErrWrongUnlockKey
)

// CheckUnlockKey reports whether key (SHOALKEY-1-...) unlocks the manager
// state in a data dir, without opening it.
func CheckUnlockKey(dataDir, key string) error {
	kek, err := state.ParseUnlockKey(key)
	if err != nil {
		return err
	}
	return state.CheckUnlockKey(RaftDir(dataDir), kek)
}

func open(cfg Config, bootstrap bool) (*Manager, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Dispatcher.Logger == nil {
		cfg.Dispatcher.Logger = cfg.Logger.With("component", "dispatcher")
	}
	transport := cfg.Transport
	if transport == nil {
		_, transport = raft.NewInmemTransport(raft.ServerAddress(cfg.NodeID))
	}
	if cfg.Identify == nil {
		cfg.Identify = func(context.Context) (string, error) { return cfg.NodeID, nil }
	}
	// The data dir holds the raft keys (beside the state they seal) and
	// the node's credentials: owner-only, also when an older shoald or an
	// operator made it otherwise.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict data dir %s: %w", cfg.DataDir, err)
	}
	r, err := state.Open(state.Config{
		Dir: RaftDir(cfg.DataDir), ID: cfg.NodeID, Transport: transport,
		Logger: cfg.Logger, SnapshotThreshold: cfg.SnapshotThreshold,
		ForceNewCluster: cfg.ForceNewCluster, UnlockKey: cfg.UnlockKey,
	}, bootstrap)
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, logger: cfg.Logger, raft: r}
	imageDir, err := tarballs.Open(ImageDir(cfg.DataDir))
	if err != nil {
		r.Close()
		return nil, err
	}
	m.networks, err = stored.New(r, stored.Config{Logger: cfg.Logger.With("component", "allocator")})
	if err != nil {
		r.Close()
		return nil, err
	}
	m.images = newImageReplicator(m, imageDir)
	m.control = controlapi.New(r, cfg.NodeID, m.networks, controlapi.WithImageStore(imageDir))
	cfg.Dispatcher.Tarballs = imageDir
	if cfg.Dispatcher.Leader == nil {
		cfg.Dispatcher.Leader = func() (bool, string) { return r.IsLeader(), r.LeaderAddr() }
	}
	if cfg.Dispatcher.Managers == nil {
		cfg.Dispatcher.Managers = func() []*api.ManagerNode {
			var managers []*api.ManagerNode
			r.Store().View(func(tx store.ReadTx) { managers = ca.ManagerNodes(tx) })
			return managers
		}
	}
	if cfg.Dispatcher.LeaderNode == nil {
		cfg.Dispatcher.LeaderNode = func() string {
			_, id := r.Raft().LeaderWithID()
			return string(id)
		}
	}
	m.dispatcher = dispatcher.New(r, cfg.Dispatcher)
	m.ca = ca.NewServer(r, ca.ServerOptions{Logger: cfg.Logger})
	m.membership = &membership{m: m, identify: cfg.Identify}
	if cfg.Dial != nil {
		r.SetForwarder(m.forwarder())
	}
	return m, nil
}

// Init creates a new cluster whose first node is self, a manager. cluster
// may carry the CA and join tokens; its id, meta and defaults are filled in.
// The cluster starts with its routing mesh's network, ingress (whose zero
// value takes the defaults), created in the same command.
func Init(ctx context.Context, cfg Config, cluster *api.Cluster, self *api.Node, ingress Ingress) (*Manager, error) {
	if HasState(cfg.DataDir) {
		return nil, fmt.Errorf("%s already holds a cluster: use `shoald run` to restart this node, or remove the directory to start over", cfg.DataDir)
	}
	ingressSpec, ingressReq, err := ingress.request()
	if err != nil {
		return nil, err
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
	if cluster == nil {
		cluster = &api.Cluster{}
	}
	if cluster.Id == "" {
		cluster.Id = api.NewID()
	}
	cluster.Meta = &api.Meta{CreatedAt: now}
	if cluster.Spec == nil {
		cluster.Spec = &api.ClusterSpec{Name: "shoal"}
	}
	if cluster.Spec.Orchestration == nil {
		cluster.Spec.Orchestration = &api.OrchestrationConfig{TaskHistoryLimit: api.DefaultHistory}
	}
	if cluster.Spec.Dispatcher == nil {
		cluster.Spec.Dispatcher = &api.DispatcherConfig{HeartbeatPeriod: durationpb.New(dispatcher.DefaultHeartbeatPeriod)}
	}
	self.Meta = &api.Meta{CreatedAt: now}
	if _, err := m.networks.CreateNetwork(ctx, ingressSpec, ingressReq, store.Create(cluster), store.Create(self)); err != nil {
		m.Close()
		return nil, fmt.Errorf("store cluster: %w", err)
	}
	return m, nil
}

// Open restarts a manager from its data dir. It does not wait for a
// leader: with several managers that needs the others, which may be
// starting too.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	if !HasState(cfg.DataDir) {
		return nil, fmt.Errorf("%s holds no cluster: create one with `shoald init`", cfg.DataDir)
	}
	m, err := open(cfg, false)
	if err != nil || !cfg.ForceNewCluster {
		return m, err
	}
	if err := m.raft.WaitLeader(ctx); err != nil {
		m.Close()
		return nil, err
	}
	// The other managers are no longer raft members: record them as
	// workers, so that they can be promoted again once they are back.
	var actions []*api.StoreAction
	m.raft.Store().View(func(tx store.ReadTx) {
		for _, n := range tx.Nodes() {
			if n.GetId() == cfg.NodeID || (n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER && n.GetSpec().GetDesiredRole() != api.NodeRole_NODE_ROLE_MANAGER) {
				continue
			}
			upd := proto.Clone(n).(*api.Node)
			upd.Role = api.NodeRole_NODE_ROLE_WORKER
			upd.Spec.DesiredRole = api.NodeRole_NODE_ROLE_WORKER
			upd.ManagerStatus = nil
			actions = append(actions, store.Update(upd))
		}
	})
	if err := m.raft.ProposeBatches(ctx, actions); err != nil {
		m.Close()
		return nil, fmt.Errorf("record the other managers as workers: %w", err)
	}
	m.logger.Warn("forced a new cluster: this manager is the only raft member now", "demoted", len(actions))
	return m, nil
}

// Join starts a manager with empty state that joins an existing cluster:
// the leader adds it as a voter (see RaftMembership.Join) and sends it the
// log.
func Join(cfg Config) (*Manager, error) {
	if HasState(cfg.DataDir) {
		return nil, fmt.Errorf("%s already holds a cluster", cfg.DataDir)
	}
	return open(cfg, false)
}

// Register adds the manager's gRPC services to a server.
func (m *Manager) Register(s *grpc.Server) {
	api.RegisterControlServer(s, controlServer{m.control, m})
	api.RegisterDispatcherServer(s, m.dispatcher)
	api.RegisterCAServer(s, m.ca)
	api.RegisterRaftMembershipServer(s, m.membership)
}

// RegisterLocal adds the services of the node's unix socket: the control
// API only.
func (m *Manager) RegisterLocal(s *grpc.Server) {
	api.RegisterControlServer(s, controlServer{m.control, m})
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
	// Every manager keeps every image, to give it to nodes, whether it
	// leads or not.
	var images sync.WaitGroup
	images.Add(1)
	go func() {
		defer images.Done()
		m.images.run(ctx)
	}()
	defer images.Wait()
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
			runs := []func(context.Context){m.dispatcher.Run, m.runManagerStatus}
			// Each term starts its controllers afresh, from the store.
			for _, c := range []controller{
				newOrchestratorController(m),
				newAllocatorController(m),
				newSchedulerController(m),
				roleController{m},
				caRotationController{m},
			} {
				runs = append(runs, func(ctx context.Context) { m.watch(ctx, c) })
			}
			for _, run := range runs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					run(lctx)
				}()
			}
		case !leading && cancel != nil:
			stop()
		}
		m.applyUnlockKey()
		select {
		case <-ctx.Done():
			return nil
		case <-m.raft.LeaderCh():
		case <-tick.C:
		}
	}
}

// applyUnlockKey makes this manager's raft keys follow the cluster's
// autolock setting and unlock key: every manager rewraps its own data key
// as soon as it applies the change. A failure is retried on the next
// round.
func (m *Manager) applyUnlockKey() {
	var c *api.Cluster
	m.raft.Store().View(func(tx store.ReadTx) { c = tx.Cluster() })
	if c == nil {
		return
	}
	var key []byte
	if c.GetSpec().GetAutolock() {
		var err error
		if key, err = state.ParseUnlockKey(c.GetUnlockKey()); err != nil {
			m.logger.Error("the cluster's unlock key is unusable; this manager's keys stay as they are", "err", err)
			return
		}
	}
	if err := m.raft.SetUnlockKey(key); err != nil {
		m.logger.Error("rewrap the raft encryption key", "autolock", key != nil, "err", err)
		return
	}
	if m.keyApplied && bytes.Equal(key, m.appliedKey) {
		return
	}
	m.appliedKey, m.keyApplied = key, true
	if m.cfg.OnUnlockKey != nil {
		m.cfg.OnUnlockKey(key)
	}
}

// Close stops the raft member; state stays on disk.
func (m *Manager) Close() error {
	return m.raft.Close()
}
