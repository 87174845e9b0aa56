package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/seal"
)

// Timings for a cluster on one LAN. hashicorp/raft's defaults (1 s) are
// tuned for WANs; a leader loss should be noticed well within our 2 s
// fail-over goal.
const (
	heartbeatTimeout   = 500 * time.Millisecond
	electionTimeout    = 500 * time.Millisecond
	leaderLeaseTimeout = 250 * time.Millisecond
	commitTimeout      = 5 * time.Millisecond
	// snapshotThreshold keeps replay after a restart short while not
	// snapshotting on every burst of task updates.
	snapshotThreshold = 8192
	snapshotRetain    = 2
	// applyTimeout bounds how long a proposal may wait to enter the log.
	applyTimeout = 10 * time.Second
)

// ErrNotLeader is returned by Propose on a follower.
var ErrNotLeader = errors.New("this manager is not the raft leader")

// Config says where a raft member keeps its state and how it talks.
type Config struct {
	// Dir holds raft.db (log and stable store), snapshots/, the space
	// reserve raft.reserve (see diskGuard) and, once a damaged snapshot
	// was set aside at start, damaged/.
	Dir string
	// ID is the member's raft server id: the node id.
	ID string
	// Transport carries raft messages; its LocalAddr is the member's address.
	Transport raft.Transport
	// Logger gets raft's own logs.
	Logger *slog.Logger
	// SnapshotThreshold overrides the number of log entries between snapshots (tests).
	SnapshotThreshold uint64
	// TrailingLogs overrides the number of entries kept after a snapshot
	// (tests: a follower then needs the snapshot).
	TrailingLogs uint64
	// ForceNewCluster rewrites the raft configuration to this member
	// alone before starting: the way out when a quorum is lost for good.
	ForceNewCluster bool
	// UnlockKey is the cluster's unlock key (ParseUnlockKey), needed when
	// the member's keys are locked (autolock): without it Open fails with
	// ErrLocked, with another one with ErrWrongUnlockKey.
	UnlockKey []byte
	// ReserveBytes is the room held back in Dir for raft's own writes
	// when the file system fills (see diskGuard): DefaultReserveBytes
	// when zero, none when negative.
	ReserveBytes int64
}

// Forwarder sends a command to the leader and returns the log index at
// which it was applied.
type Forwarder func(ctx context.Context, cmd *api.Command) (uint64, error)

// Node is a running raft member with its store.
type Node struct {
	forward atomic.Pointer[Forwarder]
	raft    *raft.Raft
	store   *store.Store
	bolt    *raftboltdb.BoltStore
	snaps   raft.SnapshotStore
	guard   *diskGuard
	stop    chan struct{}
	done    chan struct{}
	cfg     Config
	logger  *slog.Logger

	keysMu sync.Mutex // guards keys' wrapping
	keys   *keyring

	// logs is the log store raft uses (sealed, checksummed), for
	// ReadIndex to find the last command at or below an index.
	logs raft.LogStore
	// readTerm is the term in which this member, leading, last committed
	// a barrier: from then on its commit index covers every earlier
	// leader's writes, and ReadIndex may hand it out.
	readTerm atomic.Uint64
}

// HasState reports whether dir already holds a raft member's state.
func HasState(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "raft.db"))
	return err == nil
}

func raftConfig(cfg Config) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.HeartbeatTimeout = heartbeatTimeout
	rc.ElectionTimeout = electionTimeout
	rc.LeaderLeaseTimeout = leaderLeaseTimeout
	rc.CommitTimeout = commitTimeout
	rc.SnapshotThreshold = snapshotThreshold
	if cfg.SnapshotThreshold > 0 {
		rc.SnapshotThreshold = cfg.SnapshotThreshold
	}
	if cfg.TrailingLogs > 0 {
		rc.TrailingLogs = cfg.TrailingLogs
	}
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	return rc
}

// Open starts a raft member from dir. If bootstrap is set, dir must be
// empty and the member forms a new cluster with itself as the only voter.
func Open(cfg Config, bootstrap bool) (*Node, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	keys, err := openKeys(cfg)
	if err != nil {
		return nil, err
	}
	dbPath := filepath.Join(cfg.Dir, "raft.db")
	if err := checkBolt(dbPath); err != nil {
		return nil, damaged(cfg.Dir, "raft.db: %v", err)
	}
	bolt, err := raftboltdb.New(raftboltdb.Options{Path: dbPath})
	if err != nil {
		return nil, fmt.Errorf("open raft log %s: %w", dbPath, err)
	}
	sealedSnaps, err := openSnapshots(cfg.Dir, keys.dek)
	if err != nil {
		bolt.Close()
		return nil, err
	}
	if err := tightenModes(cfg.Dir); err != nil {
		bolt.Close()
		return nil, err
	}
	reserve := cfg.ReserveBytes
	if reserve == 0 {
		reserve = DefaultReserveBytes
	}
	guard := newDiskGuard(cfg.Dir, max(reserve, 0), cfg.Logger)
	// Outside in: the disk guard (a full disk), the checksum (a damaged
	// entry), the encryption (secrets at rest), bolt.
	logs := guardedLogs{LogStore: checksummedLogs{LogStore: &sealedLogs{LogStore: bolt, s: seal.New(keys.dek)}}, g: guard}
	stable := guardedStable{StableStore: bolt, g: guard}
	snaps := guardedSnapshots{SnapshotStore: sealedSnaps, g: guard}
	rc := raftConfig(cfg)
	n := &Node{store: store.New(), bolt: bolt, snaps: snaps, guard: guard, cfg: cfg, logger: cfg.Logger, keys: keys, logs: logs,
		stop: make(chan struct{}), done: make(chan struct{})}
	fail := func(err error) (*Node, error) {
		guard.close()
		bolt.Close()
		return nil, err
	}
	// The snapshot files' own checksums are over what is on disk, sealed.
	if err := verifyState(cfg.Dir, logs, sealedSnaps.inner.(*raft.FileSnapshotStore), cfg.Logger); err != nil {
		return fail(err)
	}
	if bootstrap {
		has, err := raft.HasExistingState(logs, stable, snaps)
		if err != nil {
			return fail(fmt.Errorf("check raft state: %w", err))
		}
		if has {
			return fail(fmt.Errorf("raft state exists in %s: this node is already part of a cluster", cfg.Dir))
		}
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: cfg.Transport.LocalAddr(),
		}}}
		if err := raft.BootstrapCluster(rc, logs, stable, snaps, cfg.Transport, conf); err != nil {
			return fail(fmt.Errorf("bootstrap raft: %w", err))
		}
	}
	if cfg.ForceNewCluster && !bootstrap {
		conf := raft.Configuration{Servers: []raft.Server{{
			Suffrage: raft.Voter, ID: rc.LocalID, Address: cfg.Transport.LocalAddr(),
		}}}
		// RecoverCluster replays the log into a scratch FSM to snapshot it;
		// the real store is filled by NewRaft from that snapshot.
		if err := raft.RecoverCluster(rc, &fsm{store: store.New()}, logs, stable, snaps, cfg.Transport, conf); err != nil {
			return fail(fmt.Errorf("force a new cluster: %w", err))
		}
	}
	r, err := raft.NewRaft(rc, &fsm{store: n.store}, logs, stable, snaps, cfg.Transport)
	if err != nil {
		return fail(fmt.Errorf("start raft: %w", err))
	}
	n.raft = r
	go n.handOver()
	return n, nil
}

// openKeys readies dir and returns its keys: made for a new member,
// read (with the unlock key when locked) for an existing one, and made
// while sealing the state of one an older shoald wrote in plaintext.
func openKeys(cfg Config) (*keyring, error) {
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create raft dir: %w", err)
	}
	if err := tightenModes(cfg.Dir); err != nil {
		return nil, err
	}
	// What a sealing cut short left: a partial sealed copy (the plaintext
	// is still in place) or the swapped-out plaintext (the sealed copy is).
	if err := os.RemoveAll(sealingDir(cfg.Dir)); err != nil {
		return nil, fmt.Errorf("remove %s: %w", sealingDir(cfg.Dir), err)
	}
	switch {
	case hasKeys(cfg.Dir):
	case HasState(cfg.Dir):
		if err := sealPlaintext(cfg); err != nil {
			return nil, fmt.Errorf("encrypt the raft state an older shoald left unencrypted in %s: %w", cfg.Dir, err)
		}
		cfg.Logger.Warn("encrypted the raft state an older shoald left unencrypted; rotate the join tokens (and the secrets in service specs) if its disk may have been read", "dir", cfg.Dir)
	default:
		return createKeys(cfg.Dir, nil)
	}
	return loadKeys(cfg.Dir, cfg.UnlockKey)
}

func openSnapshots(dir string, dek []byte) (*sealedSnapshots, error) {
	inner, err := raft.NewFileSnapshotStore(dir, snapshotRetain, io.Discard)
	if err != nil {
		return nil, fmt.Errorf("open raft snapshots: %w", err)
	}
	return &sealedSnapshots{inner: inner, dir: snapshotsDir(dir), s: seal.New(dek)}, nil
}

// SetUnlockKey wraps the member's data key with the cluster's unlock key
// (autolock: the key then lives only in memory and in the store), or,
// when key is nil, with a key kept on disk. The data itself is not
// re-encrypted: only the wrapping changes.
func (n *Node) SetUnlockKey(key []byte) error {
	n.keysMu.Lock()
	defer n.keysMu.Unlock()
	if (key == nil && !n.keys.locked) || (key != nil && n.keys.locked && bytes.Equal(key, n.keys.kek)) {
		return nil
	}
	if err := n.keys.rewrap(key); err != nil {
		return err
	}
	n.logger.Info("raft encryption key rewrapped", "autolock", key != nil)
	return nil
}

// handOver gives leadership away while this member's disk is full and
// another voter could lead: a leader that cannot append would refuse every
// write of the cluster. A lone manager keeps leading (and refusing
// writes), since nobody else could.
func (n *Node) handOver() {
	defer close(n.done)
	t := time.NewTicker(spaceCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-n.guard.trips:
		case <-t.C:
		}
		if n.guard.err() == nil || !n.IsLeader() {
			continue
		}
		members, err := n.Members()
		if err != nil || len(members) < 2 {
			continue
		}
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.logger.Warn("hand raft leadership over while the disk is full", "err", err)
			continue
		}
		n.logger.Warn("raft data dir is full: handed leadership to another manager", "dir", n.cfg.Dir)
	}
}

// DiskFull is the error writes get while the raft data dir is full, nil
// while there is room.
func (n *Node) DiskFull() error { return n.guard.err() }

// Store is the member's state, current up to the last applied entry.
func (n *Node) Store() *store.Store { return n.store }

// Raft exposes the raft node for membership changes.
func (n *Node) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether this member leads.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderCh is signalled on gaining (true) and losing (false) leadership.
func (n *Node) LeaderCh() <-chan bool { return n.raft.LeaderCh() }

// WaitLeader blocks until some member leads (and, if this one leads, its
// log is applied up to the point where it took office).
func (n *Node) WaitLeader(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if addr, _ := n.raft.LeaderWithID(); addr != "" {
			if n.IsLeader() {
				return n.raft.Barrier(applyTimeout).Error()
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for a raft leader: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// SetForwarder lets a follower's proposals go to the leader.
func (n *Node) SetForwarder(f Forwarder) { n.forward.Store(&f) }

// Propose commits actions as one command. It returns once the command is
// applied to this member's store, with the store's error if the command
// was refused (then nothing of it took effect). On a follower the command
// goes through the leader when a forwarder is set.
func (n *Node) Propose(ctx context.Context, actions ...*api.StoreAction) error {
	if len(actions) == 0 {
		return nil
	}
	// A member whose disk is full refuses even writes it would forward:
	// it could not append them, so waiting to see them applied here
	// would hang.
	if err := n.guard.err(); err != nil {
		return err
	}
	cmd := &api.Command{Actions: actions}
	if !n.IsLeader() {
		f := n.forward.Load()
		if f == nil {
			return ErrNotLeader
		}
		idx, err := (*f)(ctx, cmd)
		if err != nil {
			return err
		}
		return n.WaitApplied(ctx, idx)
	}
	_, err := n.ProposeCommand(ctx, cmd)
	return err
}

// MaxCommandActions caps one raft command, so that a big batch does not
// stall the log for everyone else.
const MaxCommandActions = 2000

// ProposeBatches commits actions in order, in commands of at most
// MaxCommandActions: each command is all-or-nothing, the whole is not.
func (n *Node) ProposeBatches(ctx context.Context, actions []*api.StoreAction) error {
	for len(actions) > 0 {
		k := min(len(actions), MaxCommandActions)
		if err := n.Propose(ctx, actions[:k]...); err != nil {
			return err
		}
		actions = actions[k:]
	}
	return nil
}

// WaitApplied blocks until this member's store has applied the log up to
// idx, so that a read after a forwarded write sees the write.
func (n *Node) WaitApplied(ctx context.Context, idx uint64) error {
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for n.store.Index() < idx {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for raft index %d: %w", idx, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// ReadIndex is the leader's half of a linearizable read (Raft's
// ReadIndex, Ongaro's thesis 6.4): a store index (WaitApplied) that, once
// applied, holds every write committed before the call. A new leader first commits a
// barrier in its term, since until an entry of its own term commits its
// commit index may lag its predecessor's; then it notes its commit index
// and confirms with a quorum that it still leads (a deposed leader cut
// off from the others must not hand out an index of its stale log).
func (n *Node) ReadIndex(ctx context.Context) (uint64, error) {
	if !n.IsLeader() {
		return 0, ErrNotLeader
	}
	term := n.raft.CurrentTerm()
	if n.readTerm.Load() != term {
		if err := n.raft.Barrier(applyTimeout).Error(); err != nil {
			return 0, fmt.Errorf("%w: read barrier: %v", ErrNotLeader, err)
		}
		n.readTerm.Store(term)
	}
	idx := n.raft.CommitIndex()
	verify := n.raft.VerifyLeader()
	done := make(chan error, 1)
	go func() { done <- verify.Error() }()
	select {
	case err := <-done:
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
	case <-ctx.Done():
		return 0, fmt.Errorf("confirm leadership: %w", ctx.Err())
	}
	if n.raft.CurrentTerm() != term {
		return 0, fmt.Errorf("%w: the term changed while confirming", ErrNotLeader)
	}
	return n.lastCommandAtOrBelow(idx), nil
}

// SoleVoterReadIndex is the read index of a member that is the only voter
// of its configuration: every entry of its log was committed by itself,
// so a read that waits for the last command in its log sees every write
// ever made, whether it leads at the moment or not (a lone manager whose
// disk is full steps down and up again, and keeps serving reads). ok is
// false when there are other voters.
func (n *Node) SoleVoterReadIndex() (idx uint64, ok bool) {
	servers := n.raft.GetConfiguration().Configuration().Servers
	voters := 0
	self := false
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
			self = self || s.ID == raft.ServerID(n.cfg.ID)
		}
	}
	if voters != 1 || !self {
		return 0, false
	}
	return n.lastCommandAtOrBelow(n.raft.LastIndex()), true
}

// lastCommandAtOrBelow turns a raft index into the store index that a
// read must wait for: the store counts the commands it applied (Index),
// not raft's own entries (no-ops, barriers, configurations), so waiting
// for a commit index that ends in one of those would wait for the next
// write. It is the last command at or below idx, found in the log above
// what the store holds already; when an entry cannot be read, idx itself
// (a read then waits for the next write rather than read too early).
func (n *Node) lastCommandAtOrBelow(idx uint64) uint64 {
	applied := n.store.Index()
	for i := idx; i > applied; i-- {
		var l raft.Log
		if err := n.logs.GetLog(i, &l); err != nil {
			return idx
		}
		if l.Type == raft.LogCommand {
			return i
		}
	}
	return applied
}

// ProposeCommand commits a command on the leader and returns its index.
func (n *Node) ProposeCommand(ctx context.Context, cmd *api.Command) (uint64, error) {
	if !n.IsLeader() {
		return 0, ErrNotLeader
	}
	if err := n.guard.err(); err != nil {
		return 0, err
	}
	b, err := proto.Marshal(cmd)
	if err != nil {
		return 0, fmt.Errorf("encode command: %w", err)
	}
	timeout := applyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
		if timeout <= 0 {
			return 0, ctx.Err()
		}
	}
	f := n.raft.Apply(b, timeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		return 0, fmt.Errorf("raft apply: %w", err)
	}
	if resp, ok := f.Response().(error); ok && resp != nil {
		return f.Index(), resp
	}
	return f.Index(), nil
}

// LeaderAddr is the leader's raft address (its advertise address), or ""
// while there is none.
func (n *Node) LeaderAddr() string {
	addr, _ := n.raft.LeaderWithID()
	return string(addr)
}

// Members returns the raft configuration: id → address.
func (n *Node) Members() (map[string]string, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, s := range f.Configuration().Servers {
		out[string(s.ID)] = string(s.Address)
	}
	return out, nil
}

// AddVoter adds (or re-addresses) a voting member. Leader only.
func (n *Node) AddVoter(id, addr string) error {
	return n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, applyTimeout).Error()
}

// RemoveServer removes a member. Leader only.
func (n *Node) RemoveServer(id string) error {
	return n.raft.RemoveServer(raft.ServerID(id), 0, applyTimeout).Error()
}

// Snapshot forces a snapshot now (tests, and before a clean shutdown).
func (n *Node) Snapshot() error {
	return n.raft.Snapshot().Error()
}

// Close stops the member. Its state stays on disk.
func (n *Node) Close() error {
	close(n.stop)
	<-n.done
	err := n.raft.Shutdown().Error()
	n.guard.close()
	if cerr := n.bolt.Close(); err == nil {
		err = cerr
	}
	return err
}
