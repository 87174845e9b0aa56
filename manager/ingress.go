package manager

import (
	"cmp"
	"fmt"
	"net/netip"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/allocator"
)

// DefaultIngressName names the routing mesh's network a new cluster gets.
const DefaultIngressName = "ingress"

// Ingress is the routing mesh's network that Init creates with the
// cluster. Zero fields take the defaults: DefaultIngressName, and the
// allocator's first free subnet (the first /24 of 10.0.0.0/8) and VNI.
// Errors name the `shoald init` flags that set the fields.
type Ingress struct {
	Name   string
	Subnet string // a CIDR
	VNI    uint32
}

// Check refuses what Init would refuse, so that bad flags are refused
// before anything is written.
func (in Ingress) Check() error {
	_, _, err := in.request()
	return err
}

// request is the network to allocate and the spec to store with it.
func (in Ingress) request() (*api.NetworkSpec, allocator.Network, error) {
	name := cmp.Or(in.Name, DefaultIngressName)
	if err := api.ValidateServiceName(name); err != nil {
		return nil, allocator.Network{}, fmt.Errorf("--ingress-name: %s", strings.TrimPrefix(err.Error(), "name: "))
	}
	want := allocator.Network{ID: api.NewID(), Name: name, VNI: in.VNI, Ingress: true}
	if in.Subnet != "" {
		p, err := netip.ParsePrefix(in.Subnet)
		if err != nil {
			return nil, allocator.Network{}, fmt.Errorf("--ingress-subnet %q: want a CIDR such as 10.0.0.0/24", in.Subnet)
		}
		want.Subnet = p
	}
	// The cluster holds nothing yet: what an empty allocator refuses is
	// all that can be wrong.
	if err := allocator.CheckNetwork(allocator.Config{}, want); err != nil {
		return nil, allocator.Network{}, fmt.Errorf("ingress network: %w", err)
	}
	return &api.NetworkSpec{Name: name, Subnet: in.Subnet}, want, nil
}
