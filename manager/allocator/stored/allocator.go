package stored

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

// Raft is what the Allocator needs of the raft member.
type Raft interface {
	Store() *store.Store
	Propose(ctx context.Context, actions ...*api.StoreAction) error
	ProposeBatches(ctx context.Context, actions []*api.StoreAction) error
}

// Config sets up an Allocator.
type Config struct {
	// Ranges are the pools, VNIs and dynamic ports (zero fields take the
	// allocator's defaults).
	Ranges allocator.Config
	Logger *slog.Logger
}

// Allocator is a manager's only owner of network allocation. Every
// decision (a network, a service's VIPs and ports, a task's or a node's
// addresses) is one cycle under one lock: read the store, restore the
// pure allocator from it, allocate, propose the result through raft. The
// next decision starts only once the store holds the last one, so two
// decisions on this manager never hand out one address, VIP, port, subnet
// or VNI twice. Managers other than the leader must not use it for
// writes: the store's version checks guard single objects, not addresses
// across objects (the manager forwards allocating calls to the leader).
type Allocator struct {
	raft   Raft
	logger *slog.Logger

	// mu is held from reading the store until the decision is committed.
	mu sync.Mutex
	// alloc is restored from the store at the start of every decision:
	// the store is the only truth, and freeing is implicit (removed
	// objects and terminal tasks hold nothing; see Allocation).
	alloc *allocator.Allocator
}

// New returns the allocator of the cluster whose raft member is r.
func New(r Raft, cfg Config) (*Allocator, error) {
	alloc, err := allocator.New(cfg.Ranges)
	if err != nil {
		return nil, fmt.Errorf("network allocator: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Allocator{raft: r, logger: cfg.Logger, alloc: alloc}, nil
}

// loadErr words a failure to read or restore the stored allocations.
// Its cause is formatted, not wrapped: a clash among stored objects is not
// a conflict of the caller's making, so the API edge must not map it to
// one (it is an internal error).
func loadErr(what string, err error) error {
	return fmt.Errorf("load the %s: %v", what, err)
}

// CreateNetwork allocates want (an id is picked when it has none) and
// stores it as a network with spec, in one command with the actions in
// with. A name already taken is store.ErrExist; allocation errors wrap the
// allocator's, as does an encrypted ingress network (ErrInvalid).
func (a *Allocator) CreateNetwork(ctx context.Context, spec *api.NetworkSpec, want allocator.Network, with ...*api.StoreAction) (*api.Network, error) {
	// Every node is on the ingress network for the routing mesh, whether
	// its kernel has WireGuard or not: an encrypted one would leave the
	// nodes without it out of the mesh. Checked here, where Init and the
	// control API both create networks.
	if want.Ingress && spec.GetEncrypted() {
		return nil, fmt.Errorf("%w: network %q is the ingress network, which cannot be encrypted: every node is on it for the routing mesh, with WireGuard or without", allocator.ErrInvalid, want.Name)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if want.ID == "" {
		want.ID = api.NewID()
	}
	var (
		existing *api.Network
		nets     []*api.Network
	)
	a.raft.Store().View(func(tx store.ReadTx) {
		existing = tx.NetworkByName(want.Name)
		nets = tx.Networks()
	})
	if existing != nil {
		return nil, fmt.Errorf("network %q %w (id %s)", want.Name, store.ErrExist, api.ShortID(existing.GetId()))
	}
	// Only the networks matter to a new one. A stored network that does
	// not restore would let the new one overlap it unseen: refuse rather
	// than allocate blind.
	var st allocator.Allocation
	for _, n := range nets {
		an, err := Network(n)
		if err != nil {
			return nil, loadErr("existing networks", err)
		}
		st.Networks = append(st.Networks, an)
	}
	if err := a.alloc.Restore(st); err != nil {
		return nil, loadErr("existing networks", err)
	}
	got, err := a.alloc.AllocateNetwork(want)
	if err != nil {
		return nil, err
	}
	now := timestamppb.Now()
	n := &api.Network{
		Id:      got.ID,
		Meta:    &api.Meta{CreatedAt: now, UpdatedAt: now},
		Spec:    proto.Clone(spec).(*api.NetworkSpec),
		Subnet:  got.Subnet.String(),
		Gateway: got.Gateway.String(),
		Vni:     got.VNI,
		Ingress: got.Ingress,
	}
	if err := a.raft.Propose(ctx, append(slices.Clone(with), store.Create(n))...); err != nil {
		if errors.Is(err, store.ErrExist) {
			return nil, fmt.Errorf("network %q %w", want.Name, store.ErrExist)
		}
		return nil, err
	}
	a.raft.Store().View(func(tx store.ReadTx) { n = tx.Network(n.GetId()) })
	return n, nil
}

// InUseError refuses to remove a network that services are attached to.
// It wraps allocator.ErrConflict.
type InUseError struct {
	Network  string
	Services []string // names, sorted
}

func (e *InUseError) Error() string {
	pronoun := "them"
	if len(e.Services) == 1 {
		pronoun = "it"
	}
	return fmt.Sprintf("network %q is in use by service %s: remove or update %s first", e.Network, strings.Join(e.Services, ", "), pronoun)
}

func (e *InUseError) Unwrap() error { return allocator.ErrConflict }

// RemoveNetwork removes n unless a service's spec names it (*InUseError).
// It decides under the lock so that no service is attached to n while
// its removal is under way.
func (a *Allocator) RemoveNetwork(ctx context.Context, n *api.Network) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var users []string
	a.raft.Store().View(func(tx store.ReadTx) {
		for _, svc := range tx.Services() {
			if slices.Contains(svc.GetSpec().GetNetworks(), n.GetId()) {
				users = append(users, svc.GetSpec().GetName())
			}
		}
	})
	if len(users) > 0 {
		sort.Strings(users)
		return &InUseError{Network: n.GetSpec().GetName(), Services: users}
	}
	return a.raft.Propose(ctx, store.Remove(n))
}

// CreateService gives a new service its endpoint (see allocateEndpoint)
// and stores it. It returns the service as stored.
func (a *Allocator) CreateService(ctx context.Context, svc *api.Service) (*api.Service, error) {
	return a.storeService(ctx, svc, store.Create)
}

// UpdateService allocates an updated service's endpoint again, keeping
// the VIPs and picked ports it keeps, and stores it. It returns the
// service as stored.
func (a *Allocator) UpdateService(ctx context.Context, svc *api.Service) (*api.Service, error) {
	return a.storeService(ctx, svc, store.Update)
}

func (a *Allocator) storeService(ctx context.Context, svc *api.Service, action func(any) *api.StoreAction) (*api.Service, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.allocateEndpoint(svc); err != nil {
		return nil, err
	}
	if err := a.raft.Propose(ctx, action(svc)); err != nil {
		return nil, err
	}
	a.raft.Store().View(func(tx store.ReadTx) { svc = tx.Service(svc.GetId()) })
	return svc, nil
}

// allocateEndpoint fills svc.Endpoint from its spec: published ports (a
// port another service holds is refused naming it; 0 picks one) and a VIP
// per network. The allocator is restored with everything stored (tasks'
// and nodes' addresses included, so a VIP never takes one of theirs, and
// the service's own endpoint on an update, so the call is an update and
// keeps picked ports). The caller holds a.mu until it has proposed.
func (a *Allocator) allocateEndpoint(svc *api.Service) error {
	spec := svc.GetSpec()
	ports, err := Ports(spec.GetEndpoint().GetPorts())
	if err != nil {
		return err
	}
	if len(ports) == 0 && len(spec.GetNetworks()) == 0 {
		svc.Endpoint = nil
		return nil
	}
	var (
		st    allocator.Allocation
		stErr error
	)
	a.raft.Store().View(func(tx store.ReadTx) { st, stErr = Allocation(tx) })
	if stErr != nil {
		return loadErr("network allocations", stErr)
	}
	if err := a.alloc.Restore(st); err != nil {
		return loadErr("network allocations", err)
	}
	got, err := a.alloc.AllocateService(allocator.ServiceNeeds{
		ID: svc.GetId(), Name: spec.GetName(), Networks: spec.GetNetworks(), Ports: ports, EndpointMode: spec.GetEndpoint().GetMode(),
	})
	if err != nil {
		return err
	}
	svc.Endpoint = Endpoint(got)
	return nil
}

// Waiting reports whether a task waits for the allocator: NEW and meant to
// run.
func Waiting(t *api.Task) bool {
	return t.GetStatus().GetState() == api.TaskState_TASK_STATE_NEW && t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING
}

// Pass is what one AllocateTasks call did.
type Pass struct {
	// Failed holds the tasks left NEW because they could not be allocated.
	Failed map[string]bool
	// NodesFailed is set when a node could not get its ingress address.
	NodesFailed bool
	// RestoreErr names stored allocations that clash and were skipped.
	RestoreErr string
}

// AllocateTasks moves the tasks named in due that still wait (see
// Waiting) to PENDING, each with an address and MAC on every network of
// its service's endpoint (ingress included) in the same update, or, when
// that fails, leaves it NEW with the reason in its status. With nodes
// set, it also gives every node without one its address on the ingress
// network. Stored allocations that clash are skipped (Pass.RestoreErr),
// not fatal: the controller must go on moving tasks.
func (a *Allocator) AllocateTasks(ctx context.Context, due []string, nodes bool) (Pass, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	res := Pass{Failed: map[string]bool{}}
	slices.Sort(due) // the same store gives the same addresses
	var (
		tasks   []*api.Task
		needs   = map[string]bool{} // tasks whose service has networks
		bare    []*api.Node         // nodes without an address on ingress
		st      allocator.Allocation
		stErr   error
		rebuild bool
		ingress *api.Network
	)
	a.raft.Store().View(func(tx store.ReadTx) {
		for _, id := range due {
			t := tx.Task(id)
			if t == nil || !Waiting(t) {
				continue
			}
			tasks = append(tasks, t)
			svc := tx.Service(t.GetServiceId())
			if len(svc.GetEndpoint().GetNetworks()) > 0 {
				needs[id] = true
				rebuild = true
			}
		}
		if nodes {
			for _, n := range tx.Networks() {
				if n.GetIngress() {
					ingress = n
				}
			}
			for _, n := range tx.Nodes() {
				if ingress != nil && n.GetIngress().GetNetworkId() != ingress.GetId() {
					bare = append(bare, n)
					rebuild = true
				}
			}
		}
		if rebuild {
			st, stErr = Allocation(tx)
		}
	})
	if stErr != nil {
		return res, loadErr("network allocations", stErr)
	}
	if rebuild {
		if err := a.alloc.Restore(st); err != nil {
			res.RestoreErr = err.Error()
		}
	}

	now := timestamppb.Now()
	actions := make([]*api.StoreAction, 0, len(tasks))
	for _, t := range tasks {
		upd := proto.Clone(t).(*api.Task)
		if needs[t.GetId()] {
			got, err := a.alloc.AllocateTask(allocator.TaskNeeds{ID: t.GetId(), ServiceID: t.GetServiceId(), NodeID: t.GetNodeId()})
			if err != nil {
				res.Failed[t.GetId()] = true
				why := fmt.Sprintf("network allocation failed: %v", err)
				if t.GetStatus().GetErr() == why {
					continue
				}
				upd.Status.Err = why
				upd.Status.Timestamp = now
				upd.Meta.UpdatedAt = now
				actions = append(actions, store.Update(upd))
				continue
			}
			upd.Networks = APIAttachments(got.Attachments)
		}
		upd.Status = &api.TaskStatus{State: api.TaskState_TASK_STATE_PENDING, Message: "pending", Timestamp: now}
		upd.Meta.UpdatedAt = now
		actions = append(actions, store.Update(upd))
	}
	if err := a.raft.ProposeBatches(ctx, actions); err != nil {
		return res, fmt.Errorf("move tasks to pending: %w", err)
	}

	// Nodes go in their own commands: one racing a dispatcher write must
	// not hold back the tasks.
	actions = actions[:0]
	for _, n := range bare {
		got, err := a.alloc.AllocateNode(n.GetId())
		if err != nil {
			res.NodesFailed = true
			a.logger.Warn("allocate node ingress address; retrying", "node", n.GetId(), "err", err)
			continue
		}
		upd := proto.Clone(n).(*api.Node)
		upd.Ingress = APIAttachment(got.Ingress)
		if upd.Meta == nil {
			upd.Meta = &api.Meta{}
		}
		upd.Meta.UpdatedAt = now
		actions = append(actions, store.Update(upd))
	}
	if err := a.raft.ProposeBatches(ctx, actions); err != nil {
		if ctx.Err() != nil {
			return res, err
		}
		a.logger.Warn("store node ingress addresses; retrying", "err", err)
		res.NodesFailed = true
	}
	return res, nil
}
