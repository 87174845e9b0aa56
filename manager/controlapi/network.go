package controlapi

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/allocator/stored"
	"github.com/shoal-project/shoal/manager/store"
)

// networkCreator serialises network allocations on this manager: each is
// decided from the store and must reach the store before the next one is
// decided, or two could both take the same pool subnet, VNI or address.
type networkCreator struct {
	mu  allocLock
	cfg allocator.Config
}

// allocLock is the server's own mutex, or the one WithAllocationLock shares.
type allocLock struct {
	shared *sync.Mutex
	own    sync.Mutex
}

func (l *allocLock) Lock() {
	if l.shared != nil {
		l.shared.Lock()
		return
	}
	l.own.Lock()
}

func (l *allocLock) Unlock() {
	if l.shared != nil {
		l.shared.Unlock()
		return
	}
	l.own.Unlock()
}

// WithNetworkConfig sets the pool, subnet size and VNI range networks are
// allocated from (zero fields take the allocator's defaults).
func WithNetworkConfig(cfg allocator.Config) Option {
	return func(s *Server) { s.networks.cfg = cfg }
}

// WithAllocationLock makes the server take mu around every network
// allocation: the leader's allocator controller takes the same lock while
// it allocates task and node addresses, so a VIP and a task address are
// never decided from the same store at once on this manager.
func WithAllocationLock(mu *sync.Mutex) Option {
	return func(s *Server) { s.networks.mu.shared = mu }
}

// allocStatus maps an allocator error to the gRPC code it stands for.
func allocStatus(err error) error {
	switch {
	case errors.Is(err, allocator.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, allocator.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, allocator.ErrConflict):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, allocator.ErrExhausted):
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	return toStatus(err)
}

// parseNetworkSpec checks a spec and returns the allocator's request for it.
func parseNetworkSpec(spec *api.NetworkSpec) (allocator.Network, error) {
	if spec == nil {
		return allocator.Network{}, status.Error(codes.InvalidArgument, "spec: missing")
	}
	if spec.GetName() == "" {
		return allocator.Network{}, status.Error(codes.InvalidArgument, "name: a network needs a name")
	}
	// Network names follow service names' rules: both end up as DNS-safe
	// labels and interface-name parts.
	if err := api.ValidateServiceName(spec.GetName()); err != nil {
		return allocator.Network{}, toStatus(err)
	}
	req := allocator.Network{Name: spec.GetName()}
	if s := spec.GetSubnet(); s != "" {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return allocator.Network{}, status.Errorf(codes.InvalidArgument, "subnet: %q is not a CIDR such as 10.20.0.0/24", s)
		}
		req.Subnet = p
	}
	if g := spec.GetGateway(); g != "" {
		a, err := netip.ParseAddr(g)
		if err != nil {
			return allocator.Network{}, status.Errorf(codes.InvalidArgument, "gateway: %q is not an IP address", g)
		}
		req.Gateway = a
	}
	return req, nil
}

func (s *Server) CreateNetwork(ctx context.Context, req *api.CreateNetworkRequest) (*api.CreateNetworkResponse, error) {
	want, err := parseNetworkSpec(req.GetSpec())
	if err != nil {
		return nil, err
	}
	want.ID = api.NewID()

	s.networks.mu.Lock()
	defer s.networks.mu.Unlock()
	var (
		existing *api.Network
		nets     []*api.Network
	)
	s.view(func(tx store.ReadTx) {
		existing = tx.NetworkByName(want.Name)
		nets = tx.Networks()
	})
	if existing != nil {
		return nil, status.Errorf(codes.AlreadyExists, "network %q already exists (id %s)", want.Name, api.ShortID(existing.GetId()))
	}
	alloc, err := allocator.New(s.networks.cfg)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "network allocator: %v", err)
	}
	var st allocator.Allocation
	for _, n := range nets {
		an, err := stored.Network(n)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		st.Networks = append(st.Networks, an)
	}
	// A stored network that does not restore would let the new one overlap
	// it unseen: refuse rather than allocate blind.
	if err := alloc.Restore(st); err != nil {
		return nil, status.Errorf(codes.Internal, "load the existing networks: %v", err)
	}
	got, err := alloc.AllocateNetwork(want)
	if err != nil {
		return nil, allocStatus(err)
	}

	now := timestamppb.New(s.now())
	n := &api.Network{
		Id:      got.ID,
		Meta:    &api.Meta{CreatedAt: now, UpdatedAt: now},
		Spec:    proto.Clone(req.GetSpec()).(*api.NetworkSpec),
		Subnet:  got.Subnet.String(),
		Gateway: got.Gateway.String(),
		Vni:     got.VNI,
		Ingress: got.Ingress,
	}
	if err := s.raft.Propose(ctx, store.Create(n)); err != nil {
		if errors.Is(err, store.ErrExist) {
			return nil, status.Errorf(codes.AlreadyExists, "network %q already exists", want.Name)
		}
		return nil, toStatus(err)
	}
	s.view(func(tx store.ReadTx) { n = tx.Network(n.GetId()) })
	return &api.CreateNetworkResponse{Network: n}, nil
}

func (s *Server) lookupNetwork(ref string) (*api.Network, error) {
	var (
		n   *api.Network
		err error
	)
	s.view(func(tx store.ReadTx) { n, err = tx.LookupNetwork(ref) })
	return n, lookupStatus(err)
}

func (s *Server) GetNetwork(ctx context.Context, req *api.GetNetworkRequest) (*api.GetNetworkResponse, error) {
	n, err := s.lookupNetwork(req.GetNetwork())
	if err != nil {
		return nil, err
	}
	return &api.GetNetworkResponse{Network: n}, nil
}

func (s *Server) ListNetworks(ctx context.Context, _ *api.ListNetworksRequest) (*api.ListNetworksResponse, error) {
	var nets []*api.Network
	s.view(func(tx store.ReadTx) { nets = tx.Networks() })
	sort.Slice(nets, func(i, j int) bool { return nets[i].GetSpec().GetName() < nets[j].GetSpec().GetName() })
	return &api.ListNetworksResponse{Networks: nets}, nil
}

func (s *Server) RemoveNetwork(ctx context.Context, req *api.RemoveNetworkRequest) (*api.RemoveNetworkResponse, error) {
	n, err := s.lookupNetwork(req.GetNetwork())
	if err != nil {
		return nil, err
	}
	// The routing mesh needs its network on every node for as long as the
	// cluster lives.
	if n.GetIngress() {
		return nil, status.Errorf(codes.FailedPrecondition, "network %q is the ingress network and cannot be removed", n.GetSpec().GetName())
	}
	var users []string
	s.view(func(tx store.ReadTx) {
		for _, svc := range tx.Services() {
			if slices.Contains(svc.GetSpec().GetNetworks(), n.GetId()) {
				users = append(users, svc.GetSpec().GetName())
			}
		}
	})
	if len(users) > 0 {
		sort.Strings(users)
		return nil, status.Errorf(codes.FailedPrecondition, "network %q is in use by service %s: remove or update %s first",
			n.GetSpec().GetName(), strings.Join(users, ", "), map[bool]string{true: "it", false: "them"}[len(users) == 1])
	}
	if err := s.raft.Propose(ctx, store.Remove(n)); err != nil {
		return nil, toStatus(err)
	}
	return &api.RemoveNetworkResponse{}, nil
}

// resolveNetworks replaces the network names or ids a spec gives with the
// networks' ids, refusing unknown ones and the ingress network (services
// reach it by publishing ports).
func (s *Server) resolveNetworks(spec *api.ServiceSpec) error {
	if len(spec.GetNetworks()) == 0 {
		return nil
	}
	var err error
	ids := make([]string, 0, len(spec.GetNetworks()))
	s.view(func(tx store.ReadTx) {
		for _, ref := range spec.GetNetworks() {
			n, lerr := tx.LookupNetwork(ref)
			if lerr != nil {
				err = status.Errorf(codes.NotFound, "networks: %v: create it with `shoalctl network create`", lerr)
				return
			}
			if n.GetIngress() {
				err = status.Errorf(codes.InvalidArgument, "networks: %q is the ingress network: services join it by publishing ports", ref)
				return
			}
			if !slices.Contains(ids, n.GetId()) {
				ids = append(ids, n.GetId())
			}
		}
	})
	if err != nil {
		return err
	}
	spec.Networks = ids
	return nil
}
