package controlapi

import (
	"context"
	"errors"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/orchestrator"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/scheduler"
)

// Raft is what the server needs of the raft member.
type Raft interface {
	Store() *store.Store
	Propose(ctx context.Context, actions ...*api.StoreAction) error
}

// Server implements api.ControlServer.
type Server struct {
	api.UnimplementedControlServer
	raft   Raft
	selfID string
	now    func() time.Time
	images imageStore
	// networks makes every network allocation: networks, and services'
	// VIPs and ports. The manager's allocator controller shares it.
	networks *stored.Allocator
}

// NodeIDHeader names the response header that tells a client which node
// answered (so `node ls` can mark it).
const NodeIDHeader = "shoal-node-id"

// New returns a Control server over a raft member; selfID is the node the
// server runs on, and networks the network allocator of its manager.
func New(r Raft, selfID string, networks *stored.Allocator, opts ...Option) *Server {
	s := &Server{raft: r, selfID: selfID, now: time.Now, networks: networks}
	for _, o := range opts {
		o(s)
	}
	return s
}

// toStatus is state.ToStatus, the managers' one mapping of store and raft
// errors to gRPC codes, under the name every handler here calls.
var toStatus = state.ToStatus

func (s *Server) view(fn func(tx store.ReadTx)) { s.raft.Store().View(fn) }

// GetCluster returns the cluster object without its secrets: never a CA
// key, and the join tokens only to an admin (see redactCluster).
func (s *Server) GetCluster(ctx context.Context, _ *api.GetClusterRequest) (*api.GetClusterResponse, error) {
	var c *api.Cluster
	s.view(func(tx store.ReadTx) { c = tx.Cluster() })
	if c == nil {
		return nil, status.Error(codes.FailedPrecondition, "the cluster is not initialised yet")
	}
	return &api.GetClusterResponse{Cluster: redactCluster(ctx, c)}, nil
}

// redactCluster is the cluster object as a control API caller may see it.
// No answer carries a CA's private key: whoever holds it can mint any
// node's or admin's certificate, and the managers read it from their own
// store. Join tokens go only to admins (an operator's certificate or the
// local socket), as Swarm's join-token does; a manager calling the
// control API forwards an operator's write and needs no token. The unlock
// key goes only through GetUnlockKey.
func redactCluster(ctx context.Context, c *api.Cluster) *api.Cluster {
	out := proto.Clone(c).(*api.Cluster)
	out.UnlockKey = ""
	if rc := out.GetRootCa(); rc != nil {
		rc.KeyPem = nil
	}
	if rc := out.GetCaRotation().GetNewRoot(); rc != nil {
		rc.KeyPem = nil
	}
	if !isAdmin(ctx) {
		out.JoinTokens = nil
	}
	return out
}

// isAdmin reports whether the authorized caller is an operator.
func isAdmin(ctx context.Context) bool {
	id, ok := identity.IdentityFrom(ctx)
	return ok && id.Role == identity.RoleAdmin
}

func (s *Server) ListNodes(ctx context.Context, _ *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	if s.selfID != "" {
		// Best effort: a client that cannot read headers loses only the mark.
		_ = grpc.SetHeader(ctx, metadata.Pairs(NodeIDHeader, s.selfID))
	}
	var nodes []*api.Node
	s.view(func(tx store.ReadTx) { nodes = tx.Nodes() })
	return &api.ListNodesResponse{Nodes: nodes}, nil
}

func (s *Server) GetNode(ctx context.Context, req *api.GetNodeRequest) (*api.GetNodeResponse, error) {
	var (
		n   *api.Node
		err error
	)
	var reserved *api.Resources
	s.view(func(tx store.ReadTx) {
		if n, err = tx.LookupNode(req.GetNode()); err == nil {
			reserved = reservedOn(tx.TasksOfNode(n.GetId()))
		}
	})
	if err != nil {
		return nil, lookupStatus(err)
	}
	return &api.GetNodeResponse{Node: n, Reserved: reserved}, nil
}

// validateSpec checks a spec completely, including what needs the
// scheduler's constraint parser.
func validateSpec(spec *api.ServiceSpec) error {
	if err := api.ValidateServiceSpec(spec); err != nil {
		return toStatus(err)
	}
	if _, err := scheduler.ParseConstraints(spec.GetTask().GetPlacement().GetConstraints()); err != nil {
		return status.Errorf(codes.InvalidArgument, "task.placement.constraints: %v", err)
	}
	return nil
}

func (s *Server) CreateService(ctx context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	spec := proto.Clone(req.GetSpec()).(*api.ServiceSpec)
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: missing")
	}
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	api.ApplyServiceDefaults(spec)
	if err := s.resolveNetworks(spec); err != nil {
		return nil, err
	}
	var existing *api.Service
	s.view(func(tx store.ReadTx) { existing = tx.ServiceByName(spec.GetName()) })
	if existing != nil {
		return nil, status.Errorf(codes.AlreadyExists, "service %q already exists (id %s): pick another name, or change it with `shoalctl service scale` / remove it with `shoalctl service rm`", spec.GetName(), api.ShortID(existing.GetId()))
	}
	now := timestamppb.New(s.now())
	svc := &api.Service{
		Id:          api.NewID(),
		Meta:        &api.Meta{CreatedAt: now, UpdatedAt: now},
		Spec:        spec,
		SpecVersion: 1,
	}
	svc, err := s.networks.CreateService(ctx, svc)
	if errors.Is(err, store.ErrExist) {
		return nil, status.Errorf(codes.AlreadyExists, "service %q already exists", spec.GetName())
	}
	if err != nil {
		return nil, allocStatus(err)
	}
	return &api.CreateServiceResponse{Service: svc}, nil
}

func (s *Server) lookupService(ref string) (*api.Service, error) {
	var (
		svc *api.Service
		err error
	)
	s.view(func(tx store.ReadTx) { svc, err = tx.LookupService(ref) })
	return svc, lookupStatus(err)
}

// lookupStatus maps a failed lookup of a name, id or id prefix the user
// gave: unknown is NotFound; anything else (empty, ambiguous prefix) is a
// request the user must fix, not an internal error.
func lookupStatus(err error) error {
	if err == nil || errors.Is(err, store.ErrNotFound) {
		return toStatus(err)
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

func counts(svc *api.Service, tasks []*api.Task) *api.ServiceCounts {
	c := &api.ServiceCounts{Desired: svc.GetSpec().GetReplicated().GetReplicas()}
	for _, t := range tasks {
		if t.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING {
			continue
		}
		switch st := t.GetStatus(); {
		case st.GetState() == api.TaskState_TASK_STATE_RUNNING:
			c.Running++
		case st.GetState() == api.TaskState_TASK_STATE_NEW && st.GetErr() != "":
			c.Unallocated++
		}
		if svc.GetSpec().GetGlobal() != nil {
			c.Desired++ // one per node that should run it
		}
	}
	if api.IsJob(svc.GetSpec()) {
		jobCounts(c, svc, tasks)
	}
	return c
}

func (s *Server) GetService(ctx context.Context, req *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	svc, err := s.lookupService(req.GetService())
	if err != nil {
		return nil, err
	}
	var tasks []*api.Task
	s.view(func(tx store.ReadTx) { tasks = tx.TasksOfService(svc.GetId()) })
	return &api.GetServiceResponse{Service: svc, Counts: counts(svc, tasks)}, nil
}

func (s *Server) ListServices(ctx context.Context, _ *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	resp := &api.ListServicesResponse{Counts: map[string]*api.ServiceCounts{}}
	s.view(func(tx store.ReadTx) {
		resp.Services = tx.Services()
		for _, svc := range resp.Services {
			resp.Counts[svc.GetId()] = counts(svc, tx.TasksOfService(svc.GetId()))
		}
	})
	sort.Slice(resp.Services, func(i, j int) bool {
		return resp.Services[i].GetSpec().GetName() < resp.Services[j].GetSpec().GetName()
	})
	return resp, nil
}

// writeAttempts bounds the rereads of a service whose write lost a race
// with the orchestrator, which writes a service's update_status while a
// rolling update runs: a caller that named no version gets its change
// made on the service as it is now.
const writeAttempts = 5

func (s *Server) UpdateService(ctx context.Context, req *api.UpdateServiceRequest) (*api.UpdateServiceResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "spec: missing")
	}
	spec := proto.Clone(req.GetSpec()).(*api.ServiceSpec)
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	api.ApplyServiceDefaults(spec)
	if err := s.resolveNetworks(spec); err != nil {
		return nil, err
	}
	svc, err := s.rewriteService(ctx, req.GetService(), req.GetVersion(), func(cur *api.Service) (*api.Service, error) {
		if spec.GetName() != cur.GetSpec().GetName() {
			return nil, status.Errorf(codes.InvalidArgument, "name: a service cannot be renamed (%q to %q); create a new one instead", cur.GetSpec().GetName(), spec.GetName())
		}
		if err := checkModeChange(cur.GetSpec(), spec); err != nil {
			return nil, err
		}
		if proto.Equal(spec, cur.GetSpec()) {
			return nil, nil
		}
		return orchestrator.Respec(s.now(), cur, spec), nil
	})
	if err != nil {
		return nil, err
	}
	return &api.UpdateServiceResponse{Service: svc}, nil
}

func (s *Server) RollbackService(ctx context.Context, req *api.RollbackServiceRequest) (*api.RollbackServiceResponse, error) {
	svc, err := s.rewriteService(ctx, req.GetService(), req.GetVersion(), func(cur *api.Service) (*api.Service, error) {
		upd, err := orchestrator.Rollback(s.now(), cur, "manually requested rollback", true)
		if errors.Is(err, orchestrator.ErrNoPreviousSpec) {
			return nil, status.Errorf(codes.FailedPrecondition, "service %q has no previous spec to roll back to: it was never updated", cur.GetSpec().GetName())
		}
		if err != nil {
			return nil, err
		}
		// The previous spec's networks may have gone since.
		if err := s.resolveNetworks(upd.GetSpec()); err != nil {
			return nil, err
		}
		return upd, nil
	})
	if err != nil {
		return nil, err
	}
	return &api.RollbackServiceResponse{Service: svc}, nil
}

// rewriteService reads the service ref names, has change make the service
// to store (nil: nothing to change) and stores it through the network
// allocator, reading again when the service changed in between, unless
// the caller named the version it read.
func (s *Server) rewriteService(ctx context.Context, ref string, version uint64, change func(cur *api.Service) (*api.Service, error)) (*api.Service, error) {
	for attempt := 1; ; attempt++ {
		cur, err := s.lookupService(ref)
		if err != nil {
			return nil, err
		}
		if version != 0 && version != cur.GetMeta().GetVersion() {
			return nil, status.Errorf(codes.Aborted, "service %q changed since it was read (version %d, now %d): read it again and retry", cur.GetSpec().GetName(), version, cur.GetMeta().GetVersion())
		}
		upd, err := change(cur)
		if err != nil || upd == nil {
			return cur, err
		}
		upd.Meta.UpdatedAt = timestamppb.New(s.now())
		upd, err = s.networks.UpdateService(ctx, upd)
		if errors.Is(err, store.ErrSequenceConflict) && version == 0 && attempt < writeAttempts {
			continue
		}
		if err != nil {
			return nil, allocStatus(err)
		}
		return upd, nil
	}
}

func (s *Server) RemoveService(ctx context.Context, req *api.RemoveServiceRequest) (*api.RemoveServiceResponse, error) {
	svc, err := s.lookupService(req.GetService())
	if err != nil {
		return nil, err
	}
	if err := s.raft.Propose(ctx, store.Remove(svc)); err != nil {
		return nil, toStatus(err)
	}
	return &api.RemoveServiceResponse{}, nil
}

func (s *Server) ListTasks(ctx context.Context, req *api.ListTasksRequest) (*api.ListTasksResponse, error) {
	var (
		tasks []*api.Task
		err   error
	)
	s.view(func(tx store.ReadTx) {
		var svc *api.Service
		var node *api.Node
		if req.GetService() != "" {
			if svc, err = tx.LookupService(req.GetService()); err != nil {
				return
			}
		}
		if req.GetNode() != "" {
			if node, err = tx.LookupNode(req.GetNode()); err != nil {
				return
			}
		}
		switch {
		case svc != nil:
			tasks = tx.TasksOfService(svc.GetId())
		case node != nil:
			tasks = tx.TasksOfNode(node.GetId())
		default:
			tasks = tx.Tasks()
		}
		if node != nil {
			kept := tasks[:0:0]
			for _, t := range tasks {
				if t.GetNodeId() == node.GetId() {
					kept = append(kept, t)
				}
			}
			tasks = kept
		}
	})
	if err != nil {
		return nil, lookupStatus(err)
	}
	sortTasks(tasks)
	return &api.ListTasksResponse{Tasks: tasks}, nil
}

// sortTasks orders tasks by service, slot, then newest first, as `service
// ps` shows them.
func sortTasks(tasks []*api.Task) {
	sort.Slice(tasks, func(i, j int) bool {
		a, b := tasks[i], tasks[j]
		if a.GetServiceName() != b.GetServiceName() {
			return a.GetServiceName() < b.GetServiceName()
		}
		if a.GetSlot() != b.GetSlot() {
			return a.GetSlot() < b.GetSlot()
		}
		if a.GetRestartCount() != b.GetRestartCount() {
			return a.GetRestartCount() > b.GetRestartCount()
		}
		return a.GetMeta().GetCreatedAt().AsTime().After(b.GetMeta().GetCreatedAt().AsTime())
	})
}

// watchCoalesce lets a burst of task changes go out as one message.
const watchCoalesce = 20 * time.Millisecond

func (s *Server) WatchTasks(req *api.WatchTasksRequest, stream api.Control_WatchTasksServer) error {
	svc, err := s.lookupService(req.GetService())
	if err != nil {
		return err
	}
	sub := s.raft.Store().Subscribe()
	defer sub.Close()
	send := func() (bool, error) {
		var (
			cur   *api.Service
			tasks []*api.Task
		)
		s.view(func(tx store.ReadTx) {
			cur = tx.Service(svc.GetId())
			tasks = tx.TasksOfService(svc.GetId())
		})
		sortTasks(tasks)
		if cur == nil {
			return true, stream.Send(&api.WatchTasksResponse{Service: svc, Tasks: tasks, Removed: true})
		}
		return false, stream.Send(&api.WatchTasksResponse{Service: cur, Tasks: tasks})
	}
	if done, err := send(); done || err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-sub.Ready():
		}
		if !store.Affects(sub.Next(), touches(svc.GetId())) {
			continue
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-time.After(watchCoalesce):
		}
		sub.Next()
		if done, err := send(); done || err != nil {
			return err
		}
	}
}

// touches matches events on a service or its tasks.
func touches(serviceID string) func(store.Event) bool {
	return func(ev store.Event) bool {
		switch o := ev.Object.(type) {
		case *api.Task:
			return o.GetServiceId() == serviceID
		case *api.Service:
			return o.GetId() == serviceID
		}
		return false
	}
}
