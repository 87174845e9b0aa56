package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
)

// Defaults for worker liveness. A worker heartbeats every period; missing
// grace periods' worth marks it down. 750 ms with a grace of 3 notices a
// lost node in about 2.3 s, leaving room inside the 5 s replacement goal
// for starting the replacements, while two late heartbeats on a loaded
// machine still do not flap the node. (Measured: 1 s × 3 gave 4.5–5.1 s
// from loss to all replacements running on this 2-core machine.)
const (
	DefaultHeartbeatPeriod = 750 * time.Millisecond
	DefaultGraceMultiplier = 3
	// statusRetries bounds retries of a status write that lost a race with
	// another write to the same task.
	statusRetries = 5
)

// Raft is what the dispatcher needs of the raft member.
type Raft interface {
	Store() *store.Store
	Propose(ctx context.Context, actions ...*api.StoreAction) error
}

// Config tunes the dispatcher.
type Config struct {
	HeartbeatPeriod time.Duration
	GraceMultiplier int
	// Grace, when set, is how long a node may stay silent before it is
	// marked down; it overrides GraceMultiplier.
	Grace  time.Duration
	Logger *slog.Logger
	// Leader reports whether this manager leads and where the leader is.
	// Only the leader serves workers: sessions and node-down detection
	// must live in one place. Nil means always the leader (tests).
	Leader func() (bool, string)
	// Managers lists the managers (node and address) for workers to fail
	// over to, and to check the managers' certificates against.
	Managers func() []*api.ManagerNode
	// LeaderNode names the leader's node, for a follower to tell a
	// worker whom to expect at the leader's address.
	LeaderNode func() string
	// Tarballs holds the image tarballs FetchImage serves; nil serves none.
	Tarballs *tarballs.Dir
}

type session struct {
	id       string
	nodeID   string
	lastSeen time.Time
	done     chan struct{} // closed when the session ends
	// streams holds the stop channel of the session's live stream of
	// each kind (see claimStream); guarded by Dispatcher.mu.
	streams map[string]chan struct{}
	// reports limits the session's status reports (statusRate).
	reports limiter
}

// Dispatcher implements api.DispatcherServer.
type Dispatcher struct {
	api.UnimplementedDispatcherServer
	raft   Raft
	cfg    Config
	logger *slog.Logger

	mu       sync.Mutex
	sessions map[string]*session // by session id
	byNode   map[string]*session
	// closedAt is when a node's last session closed without expiring;
	// the node's grace runs from then.
	closedAt map[string]time.Time
	// managers is the manager list as Run last saw it; managersChanged is
	// closed (and replaced) when it changes, for the open sessions to
	// send it on.
	managers        []*api.ManagerNode
	managersChanged chan struct{}

	// batchMu guards batch, the status reports gathering for the next
	// write (see recordStatus).
	batchMu sync.Mutex
	batch   *statusBatch

	// opens limits each node's session opens (sessionRate), by node id;
	// guarded by mu.
	opens map[string]*limiter
}

// sessionRate and sessionBurst limit how often a node opens a session:
// each open may write the node's description and state to raft. A worker
// reconnects with a back-off from 50 ms, which the burst covers.
const (
	sessionRate  = 2 // per second
	sessionBurst = 10
)

// sessionOpens is nodeID's session-open limiter.
func (d *Dispatcher) sessionOpens(nodeID string) *limiter {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.opens[nodeID]
	if l == nil {
		l = &limiter{rate: sessionRate, burst: sessionBurst}
		d.opens[nodeID] = l
	}
	return l
}

// New returns a dispatcher; Run must be running for node-down detection.
func New(r Raft, cfg Config) *Dispatcher {
	if cfg.HeartbeatPeriod <= 0 {
		cfg.HeartbeatPeriod = DefaultHeartbeatPeriod
	}
	if cfg.GraceMultiplier <= 0 {
		cfg.GraceMultiplier = DefaultGraceMultiplier
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Dispatcher{
		raft: r, cfg: cfg, logger: cfg.Logger,
		sessions: map[string]*session{}, byNode: map[string]*session{}, closedAt: map[string]time.Time{},
		managersChanged: make(chan struct{}),
		opens:           map[string]*limiter{},
	}
}

func (d *Dispatcher) grace() time.Duration {
	if d.cfg.Grace > 0 {
		return d.cfg.Grace
	}
	return d.cfg.HeartbeatPeriod * time.Duration(d.cfg.GraceMultiplier)
}

// period is the heartbeat period with ±10% jitter, so that workers that
// started together do not beat in lockstep.
func (d *Dispatcher) period() time.Duration {
	p := d.cfg.HeartbeatPeriod
	return p - p/10 + time.Duration(rand.Int64N(int64(p/5)+1))
}

// Run marks nodes down when their heartbeats stop, until ctx ends. Nodes
// that are READY in the store without a session (they never opened one
// with this leader, or theirs closed) are given one grace period, from
// the start or from the close, to open a new one.
func (d *Dispatcher) Run(ctx context.Context) {
	start := time.Now()
	tick := time.NewTicker(d.cfg.HeartbeatPeriod / 4)
	defer tick.Stop()
	managersTick := time.NewTicker(managersPoll)
	defer managersTick.Stop()
	for {
		select {
		case <-ctx.Done():
			d.mu.Lock()
			for _, s := range d.sessions {
				d.endLocked(s)
			}
			d.mu.Unlock()
			return
		case <-managersTick.C:
			d.refreshManagers()
			continue
		case <-tick.C:
		}
		now := time.Now()
		var expired []string
		d.mu.Lock()
		for _, s := range d.sessions {
			if now.Sub(s.lastSeen) > d.grace() {
				expired = append(expired, s.nodeID)
				d.endLocked(s)
			}
		}
		d.mu.Unlock()
		if now.Sub(start) > d.grace() {
			var orphans []string
			d.raft.Store().View(func(tx store.ReadTx) {
				for _, n := range tx.Nodes() {
					if n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY && d.withoutSession(n.GetId(), start, now) > d.grace() {
						orphans = append(orphans, n.GetId())
					}
				}
			})
			expired = append(expired, orphans...)
		}
		for _, id := range expired {
			msg := fmt.Sprintf("heartbeat missed for more than %v", d.grace())
			d.logger.Warn("node down", "node", id, "reason", msg)
			if err := d.setNodeState(ctx, id, api.NodeState_NODE_STATE_DOWN, msg, nil, ""); err != nil && ctx.Err() == nil {
				d.logger.Error("mark node down", "node", id, "err", err)
			}
		}
	}
}

// withoutSession is how long a node has had no session: since its last
// one closed, or since start if it had none since. Zero if it has one.
func (d *Dispatcher) withoutSession(nodeID string, start, now time.Time) time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byNode[nodeID] != nil {
		return 0
	}
	since := start
	if at, ok := d.closedAt[nodeID]; ok && at.After(since) {
		since = at
	}
	return now.Sub(since)
}

func (d *Dispatcher) endLocked(s *session) {
	delete(d.sessions, s.id)
	if d.byNode[s.nodeID] == s {
		delete(d.byNode, s.nodeID)
	}
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

func (d *Dispatcher) lookup(ctx context.Context, id string) (*session, error) {
	if err := d.leading(ctx); err != nil {
		return nil, err
	}
	d.mu.Lock()
	s := d.sessions[id]
	d.mu.Unlock()
	if s == nil {
		return nil, status.Errorf(codes.NotFound, "session %q is unknown or expired: open a new session", id)
	}
	if err := sessionOwner(ctx, s); err != nil {
		return nil, err
	}
	return s, nil
}

func (d *Dispatcher) setNodeState(ctx context.Context, nodeID string, st api.NodeState, msg string, desc *api.NodeDescription, addr string) error {
	for i := 0; ; i++ {
		var n *api.Node
		d.raft.Store().View(func(tx store.ReadTx) { n = tx.Node(nodeID) })
		if n == nil {
			return fmt.Errorf("node %s: %w", nodeID, store.ErrNotFound)
		}
		upd := proto.Clone(n).(*api.Node)
		if upd.Status == nil {
			upd.Status = &api.NodeStatus{}
		}
		// A session opened again with nothing new (a worker reconnecting)
		// costs no raft entry.
		if upd.Status.State == st && upd.Status.Message == msg &&
			(desc == nil || proto.Equal(desc, n.GetDescription())) && (addr == "" || addr == n.GetStatus().GetAddr()) {
			return nil
		}
		upd.Status.State, upd.Status.Message = st, msg
		if addr != "" {
			upd.Status.Addr = addr
		}
		if desc != nil {
			upd.Description = desc
		}
		upd.Meta.UpdatedAt = timestamppb.Now()
		err := d.raft.Propose(ctx, store.Update(upd))
		if err == nil || !errors.Is(err, store.ErrSequenceConflict) || i >= statusRetries {
			return err
		}
	}
}

// LeaderHeader is the trailer in which a follower names the leader when
// it refuses a worker, so the worker can go there at once.
const LeaderHeader = "shoal-leader"

// LeaderNodeHeader is the trailer in which a follower names the leader's
// node beside LeaderHeader: the worker accepts the leader's certificate
// for that node although it was not a manager when the worker last heard.
const LeaderNodeHeader = "shoal-leader-node"

// leading refuses the call unless this manager leads, naming the leader.
func (d *Dispatcher) leading(ctx context.Context) error {
	if d.cfg.Leader == nil {
		return nil
	}
	ok, addr := d.cfg.Leader()
	if ok {
		return nil
	}
	if addr != "" {
		md := metadata.Pairs(LeaderHeader, addr)
		if d.cfg.LeaderNode != nil {
			if id := d.cfg.LeaderNode(); id != "" {
				md.Set(LeaderNodeHeader, id)
			}
		}
		_ = grpc.SetTrailer(ctx, md)
	}
	return status.Errorf(codes.Unavailable, "this manager is not the leader; the leader is at %q", addr)
}

// authorize checks that the caller may act for nodeID: a node certificate
// acts only for its own node. Admin and local (unix socket) callers, and
// calls without an identity (unit tests wire no interceptors), pass.
func authorize(ctx context.Context, nodeID string) error {
	if nodeID == "" {
		return status.Error(codes.InvalidArgument, "node_id: missing")
	}
	if id, ok := identity.IdentityFrom(ctx); ok && id.IsNode() && id.NodeID != nodeID {
		return status.Errorf(codes.PermissionDenied, "node %s may not act for node %s", id.NodeID, nodeID)
	}
	return nil
}

// sessionOwner checks that the caller is the node that owns the session.
func sessionOwner(ctx context.Context, s *session) error {
	if id, ok := identity.IdentityFrom(ctx); ok && id.IsNode() && id.NodeID != s.nodeID {
		return status.Errorf(codes.PermissionDenied, "node %s may not use the session of node %s", id.NodeID, s.nodeID)
	}
	return nil
}

func (d *Dispatcher) Session(req *api.SessionRequest, stream api.Dispatcher_SessionServer) error {
	ctx := stream.Context()
	if err := d.leading(ctx); err != nil {
		return err
	}
	if err := authorize(ctx, req.GetNodeId()); err != nil {
		return err
	}
	if !d.sessionOpens(req.GetNodeId()).allow(time.Now()) {
		return status.Errorf(codes.ResourceExhausted, "node %s opens sessions faster than %d a second: back off and retry", req.GetNodeId(), sessionRate)
	}
	addr := ""
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		addr = p.Addr.String()
	}
	var node, namesake *api.Node
	d.raft.Store().View(func(tx store.ReadTx) {
		node = tx.Node(req.GetNodeId())
		namesake = store.NodeByHostname(tx, req.GetDescription().GetHostname(), req.GetNodeId())
	})
	if node == nil {
		return status.Errorf(codes.NotFound, "node %s is not part of this cluster", req.GetNodeId())
	}
	if err := checkDescription(node, req.GetDescription(), addr, namesake); err != nil {
		return err
	}
	s := &session{id: api.NewID(), nodeID: req.GetNodeId(), lastSeen: time.Now(), done: make(chan struct{})}
	d.mu.Lock()
	if old := d.byNode[s.nodeID]; old != nil {
		d.endLocked(old)
	}
	d.sessions[s.id] = s
	d.byNode[s.nodeID] = s
	delete(d.closedAt, s.nodeID)
	d.mu.Unlock()

	if err := d.setNodeState(ctx, s.nodeID, api.NodeState_NODE_STATE_READY, "", req.GetDescription(), addr); err != nil {
		d.mu.Lock()
		d.endLocked(s)
		d.mu.Unlock()
		if errors.Is(err, store.ErrExist) { // a namesake joined meanwhile
			return status.Errorf(codes.AlreadyExists, "register session: %v: give this node another hostname", err)
		}
		return status.Errorf(codes.Unavailable, "register session: %v", err)
	}
	d.logger.Info("session opened", "node", s.nodeID, "session", s.id)
	d.mu.Lock()
	changed := d.managersChanged
	d.mu.Unlock()
	var managers []*api.ManagerNode
	if d.cfg.Managers != nil {
		managers = d.cfg.Managers()
	}
	if err := stream.Send(d.sessionMessage(s, managers)); err != nil {
		return err
	}
	for {
		select {
		case <-changed:
			// The managers changed (one was demoted, promoted, moved):
			// the worker must stop trusting a node that is no longer one.
			d.mu.Lock()
			changed, managers = d.managersChanged, d.managers
			d.mu.Unlock()
			if err := stream.Send(d.sessionMessage(s, managers)); err != nil {
				return err
			}
			continue
		case <-ctx.Done():
			d.mu.Lock()
			current := d.sessions[s.id] == s
			d.endLocked(s)
			if current {
				d.closedAt[s.nodeID] = time.Now()
			}
			d.mu.Unlock()
			if current {
				// The worker went away cleanly or its connection broke; it is
				// not known to be dead, so its tasks stay until the grace runs
				// out without a new session.
				d.logger.Info("session closed", "node", s.nodeID, "session", s.id)
			}
			return nil
		case <-s.done:
			return status.Error(codes.Aborted, "session ended: a newer session replaced it or heartbeats stopped; open a new one")
		}
	}
}

func (d *Dispatcher) sessionMessage(s *session, managers []*api.ManagerNode) *api.SessionMessage {
	msg := &api.SessionMessage{SessionId: s.id, HeartbeatPeriod: durationpb.New(d.period()), HeartbeatGrace: durationpb.New(d.grace()), ManagerNodes: managers}
	for _, m := range managers {
		msg.Managers = append(msg.Managers, m.GetAddr())
	}
	return msg
}

// managersPoll is how often the leader looks for a change in the manager
// list to send to the workers: a demoted manager is distrusted by the
// workers within it. One store read a second costs nothing.
const managersPoll = time.Second

// refreshManagers reads the manager list and, when it changed, wakes the
// sessions to send it.
func (d *Dispatcher) refreshManagers() {
	if d.cfg.Managers == nil {
		return
	}
	managers := d.cfg.Managers()
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.EqualFunc(d.managers, managers, func(a, b *api.ManagerNode) bool { return proto.Equal(a, b) }) {
		return
	}
	d.managers = managers
	close(d.managersChanged)
	d.managersChanged = make(chan struct{})
}

// checkDescription refuses a session whose description the managers
// cannot take: one that is not well formed (api.ValidateNodeDescription),
// one naming another node's hostname (that node's pinned tasks would come
// here), or one whose data address is not the node's. Every node sends
// overlay traffic to a node's data address, so the managers take only an
// address they can tie to the node: the IP of the advertise address it
// joined with (checked then; a manager's raft address for managers that
// joined before it was recorded), or the IP its session comes from (a
// TLS connection that completed from there). A loopback data address is
// taken only from a session that comes from loopback: a node on the
// managers' own host, whose loopback is theirs. A node without a data
// address has no overlay.
func checkDescription(n *api.Node, desc *api.NodeDescription, sessionAddr string, namesake *api.Node) error {
	if desc == nil {
		return nil
	}
	if err := api.ValidateNodeDescription(desc); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	if namesake != nil {
		return status.Errorf(codes.AlreadyExists, "hostname %q is taken by node %s: give this node another hostname (shoald --hostname), or, if that node is gone, remove it first with `shoalctl node rm %s`",
			desc.GetHostname(), namesake.GetId(), namesake.GetId())
	}
	data := desc.GetDataAddr()
	if data == "" {
		return nil
	}
	want, _ := netip.ParseAddr(data) // valid: checked above
	if from, err := netip.ParseAddrPort(sessionAddr); want.IsLoopback() && (err != nil || !from.Addr().Unmap().IsLoopback()) {
		return status.Errorf(codes.PermissionDenied, "description.data_addr %s: a loopback address is taken only from a node on the managers' own host; start shoald with --advertise-addr on the address other nodes reach it by", data)
	}
	var seen []string
	for _, a := range []string{n.GetAdvertiseAddr(), n.GetManagerStatus().GetRaftAddr(), sessionAddr} {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			continue
		}
		if ap.Addr().Unmap() == want.Unmap() {
			return nil
		}
		seen = append(seen, ap.Addr().Unmap().String())
	}
	return status.Errorf(codes.PermissionDenied, "description.data_addr %s is not this node's: the managers take only an address they saw it use (%s); start shoald with --advertise-addr on the address other nodes reach it by", data, strings.Join(seen, ", "))
}

func (d *Dispatcher) Heartbeat(ctx context.Context, req *api.HeartbeatRequest) (*api.HeartbeatResponse, error) {
	s, err := d.lookup(ctx, req.GetSessionId())
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	s.lastSeen = time.Now()
	d.mu.Unlock()
	resp := &api.HeartbeatResponse{Period: durationpb.New(d.period())}
	d.raft.Store().View(func(tx store.ReadTx) {
		if n := tx.Node(s.nodeID); n != nil {
			resp.DesiredRole = n.GetSpec().GetDesiredRole()
			resp.RenewCertificate = ca.NeedsRenewal(tx.Cluster(), tx.Nodes, n)
		}
	})
	return resp, nil
}
