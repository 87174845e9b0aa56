package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
)

// DefaultIngressName names the routing mesh's network made at init.
const DefaultIngressName = "ingress"

// ingressNetwork allocates the ingress network `shoald init` creates: the
// name, subnet and VNI from the flags, or the allocator's defaults (the
// first /24 of 10.0.0.0/8, the first VNI). Bad flags are refused before
// anything is written.
func ingressNetwork(name, subnet string, vni uint32) (*api.Network, error) {
	if name == "" {
		name = DefaultIngressName
	}
	if err := api.ValidateServiceName(name); err != nil {
		return nil, fmt.Errorf("--ingress-name: %s", strings.TrimPrefix(err.Error(), "name: "))
	}
	want := allocator.Network{ID: api.NewID(), Name: name, VNI: vni, Ingress: true}
	if subnet != "" {
		p, err := netip.ParsePrefix(subnet)
		if err != nil {
			return nil, fmt.Errorf("--ingress-subnet %q: want a CIDR such as 10.0.0.0/24", subnet)
		}
		want.Subnet = p
	}
	alloc, err := allocator.New(allocator.Config{})
	if err != nil {
		return nil, err
	}
	got, err := alloc.AllocateNetwork(want)
	if err != nil {
		return nil, fmt.Errorf("ingress network: %w", err)
	}
	now := timestamppb.Now()
	return &api.Network{
		Id:      got.ID,
		Meta:    &api.Meta{CreatedAt: now, UpdatedAt: now},
		Spec:    &api.NetworkSpec{Name: name, Subnet: subnet},
		Subnet:  got.Subnet.String(),
		Gateway: got.Gateway.String(),
		Vni:     got.VNI,
		Ingress: true,
	}, nil
}
