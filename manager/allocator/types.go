package allocator

import (
	"errors"
	"net"
	"net/netip"
	"slices"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Endpoint modes of a service. Protocols, publishing modes and traffic
// policies of its ports are the API's (api.ProtocolTCP, api.ModeIngress,
// api.TrafficLocal...), with its rules: see normalized.
const (
	EndpointModeVIP   = "vip"
	EndpointModeDNSRR = "dnsrr"
)

// Errors wrapped by the allocator, one per gRPC status the API edge returns.
var (
	// ErrInvalid: the request is malformed (InvalidArgument). It is the
	// API's own, so the port rules' errors (api.NormalizePort) pass through
	// unchanged.
	ErrInvalid = api.ErrInvalid
	// ErrNotFound: the request names a network or service the allocator
	// does not know (NotFound).
	ErrNotFound = errors.New("not found")
	// ErrConflict: the request clashes with another object's allocation:
	// a published port, an overlapping subnet, a VNI, a name, a network in
	// use (FailedPrecondition).
	ErrConflict = errors.New("conflict")
	// ErrExhausted: no free subnet, address, VNI or port (ResourceExhausted).
	ErrExhausted = errors.New("exhausted")
)

// Network is an overlay network as the allocator sees it. The proto message
// the manager stores will carry the same fields.
type Network struct {
	ID, Name string
	Subnet   netip.Prefix
	Gateway  netip.Addr
	VNI      uint32
	// Ingress marks the routing mesh network; there is at most one.
	Ingress bool
}

// PortConfig is one published port of a service.
type PortConfig struct {
	Protocol string // api.ProtocolTCP or api.ProtocolUDP; "" means tcp
	Target   uint16 // port inside the task
	// Published is the port on the nodes; 0 asks the allocator to pick one
	// from the dynamic range (ingress mode) or leaves it to the node (host mode).
	Published uint16
	Mode      string // api.ModeIngress or api.ModeHost; "" means ingress
	// Traffic is api.TrafficCluster or api.TrafficLocal for ingress ports; ""
	// means cluster. Host ports take none: they only reach local tasks.
	Traffic string
}

// ServiceNeeds is what a service asks of the allocator.
type ServiceNeeds struct {
	ID, Name string
	// Networks are the ids (or names) of the overlay networks the service
	// is attached to, not counting ingress, which the allocator adds when
	// the service publishes a port (in host mode too: the node DNATs host
	// ports to the task's ingress address).
	Networks     []string
	Ports        []PortConfig
	EndpointMode string // EndpointModeVIP or EndpointModeDNSRR; "" means vip
}

// TaskNeeds is what a task asks of the allocator. The task is also attached
// to every network of its service's allocation (ingress included).
type TaskNeeds struct {
	ID, ServiceID, NodeID string
	Networks              []string
}

// VIP is a service's virtual address on one network.
type VIP struct {
	NetworkID string
	Addr      netip.Prefix // the address with the network's prefix length
}

// Attachment is an address on one network, with the MAC that goes with it
// so that workers can program static neighbour entries.
type Attachment struct {
	NetworkID string
	Addr      netip.Prefix
	MAC       net.HardwareAddr
}

// ServiceAllocation is what a service was given.
type ServiceAllocation struct {
	ServiceID, Name string
	EndpointMode    string
	// Networks are the network ids the service is attached to, ingress last
	// when it publishes ports.
	Networks []string
	// VIPs: one per network, none in dnsrr mode, and none on ingress
	// unless a port is published in ingress mode.
	VIPs  []VIP
	Ports []PortConfig // normalised, with Published filled in for ingress ports
}

// TaskAllocation is what a task was given.
type TaskAllocation struct {
	TaskID, ServiceID, NodeID string
	Attachments               []Attachment
}

// NodeAllocation is a node's address on the ingress network: the ingress
// bridge on each node carries its own address, so the node can reach (and
// masquerade to) the tasks it balances to.
type NodeAllocation struct {
	NodeID  string
	Ingress Attachment
}

// Allocation is everything allocated in the cluster: what Restore takes and
// State returns. Slices are sorted by id in State.
type Allocation struct {
	Networks []Network
	Services []ServiceAllocation
	Tasks    []TaskAllocation
	Nodes    []NodeAllocation
}

// normalized fills in defaults and checks a port from a ServiceNeeds, by
// the API's rules.
func (p PortConfig) normalized() (PortConfig, error) {
	n, err := api.NormalizePort(&api.PortConfig{Protocol: p.Protocol, Target: uint32(p.Target), Published: uint32(p.Published), Mode: p.Mode, Traffic: p.Traffic})
	if err != nil {
		return PortConfig{}, err
	}
	return PortConfig{Protocol: n.GetProtocol(), Target: p.Target, Published: p.Published, Mode: n.GetMode(), Traffic: n.GetTraffic()}, nil
}

func (s ServiceAllocation) clone() ServiceAllocation {
	s.Networks = slices.Clone(s.Networks)
	s.VIPs = slices.Clone(s.VIPs)
	s.Ports = slices.Clone(s.Ports)
	return s
}

func (a Attachment) clone() Attachment {
	a.MAC = slices.Clone(a.MAC)
	return a
}

func (t TaskAllocation) clone() TaskAllocation {
	t.Attachments = slices.Clone(t.Attachments)
	for i := range t.Attachments {
		t.Attachments[i] = t.Attachments[i].clone()
	}
	return t
}

func (n NodeAllocation) clone() NodeAllocation {
	n.Ingress = n.Ingress.clone()
	return n
}
