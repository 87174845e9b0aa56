package controlapi

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
	"github.com/shoal-project/shoal/manager/store"
)

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
	n, err := s.networks.CreateNetwork(ctx, req.GetSpec(), want)
	if err != nil {
		return nil, allocStatus(err)
	}
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
	if err := s.networks.RemoveNetwork(ctx, n); err != nil {
		return nil, allocStatus(err)
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
