package allocator

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/ipam"
)

// Dynamic range for published ports picked by the allocator: Swarm's
// 30000-32767, which also stays clear of Linux's ephemeral range
// (32768-60999) so a picked port never collides with an outgoing connection.
const (
	DefaultMinDynamicPort uint16 = 30000
	DefaultMaxDynamicPort uint16 = 32767
)

// Config sets the allocator's ranges; zero fields take the defaults.
type Config struct {
	// Pool is carved into /PoolBits subnets for networks created without
	// one (default ipam.DefaultPoolBase, /ipam.DefaultPoolSize).
	Pool     netip.Prefix
	PoolBits int
	// MinVNI and MaxVNI bound the VXLAN ids (default ipam.DefaultMinVNI to
	// ipam.MaxVNI).
	MinVNI, MaxVNI uint32
	// MinPort and MaxPort bound the published ports picked for services
	// that give only a target (default 30000-32767).
	MinPort, MaxPort uint16
}

func (c Config) withDefaults() Config {
	if !c.Pool.IsValid() {
		c.Pool = ipam.DefaultPoolBase
	}
	if c.PoolBits == 0 {
		c.PoolBits = ipam.DefaultPoolSize
	}
	if c.MinVNI == 0 {
		c.MinVNI = ipam.DefaultMinVNI
	}
	if c.MaxVNI == 0 {
		c.MaxVNI = ipam.MaxVNI
	}
	if c.MinPort == 0 {
		c.MinPort = DefaultMinDynamicPort
	}
	if c.MaxPort == 0 {
		c.MaxPort = DefaultMaxDynamicPort
	}
	return c
}

type portKey struct {
	protocol string
	port     uint16
}

func (k portKey) String() string { return fmt.Sprintf("%d/%s", k.port, k.protocol) }

type network struct {
	Network
	ips *ipam.Allocator
}

// Allocator decides network allocations. It is safe for concurrent use.
type Allocator struct {
	mu       sync.Mutex
	cfg      Config
	pool     *ipam.Pool
	vnis     *ipam.VNIAllocator
	networks map[string]*network
	services map[string]ServiceAllocation
	tasks    map[string]TaskAllocation
	nodes    map[string]NodeAllocation
	// ports holds the ingress published ports, cluster-wide, by service id.
	ports    map[portKey]string
	nextPort uint16 // next-fit cursor, so a freed port is not reused at once
}

// New returns an empty allocator; call Restore to load existing allocations.
func New(cfg Config) (*Allocator, error) {
	cfg = cfg.withDefaults()
	if cfg.MinPort > cfg.MaxPort {
		return nil, fmt.Errorf("%w: dynamic port range %d-%d is empty", ErrInvalid, cfg.MinPort, cfg.MaxPort)
	}
	a := &Allocator{cfg: cfg}
	if err := a.reset(); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Allocator) reset() error {
	pool, err := ipam.NewPool(a.cfg.Pool, a.cfg.PoolBits)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	vnis, err := ipam.NewVNIAllocator(a.cfg.MinVNI, a.cfg.MaxVNI)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	a.pool, a.vnis = pool, vnis
	a.networks = map[string]*network{}
	a.services = map[string]ServiceAllocation{}
	a.tasks = map[string]TaskAllocation{}
	a.nodes = map[string]NodeAllocation{}
	a.ports = map[portKey]string{}
	a.nextPort = a.cfg.MinPort
	return nil
}

// undo collects the steps to take back when a later step of an allocation
// fails, so that a failed call changes nothing.
type undo []func()

func (u *undo) add(f func()) { *u = append(*u, f) }

func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// AllocateNetwork gives req a subnet (from the pool unless req.Subnet is
// set), a gateway (the first host unless req.Gateway is set) and a VNI
// (picked unless req.VNI is set), and returns the completed network.
func (a *Allocator) AllocateNetwork(req Network) (Network, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.allocateNetwork(req)
	if err != nil {
		return Network{}, fmt.Errorf("allocate network %s: %w", cmp.Or(req.Name, req.ID), err)
	}
	return n, nil
}

// CheckNetwork returns the error AllocateNetwork would give req in a
// cluster without networks: what is wrong with the request whatever else
// exists (no id or name, a subnet with host bits set, a gateway outside it, a
// VNI out of range), so that it can be refused before a cluster exists.
func CheckNetwork(cfg Config, req Network) error {
	a, err := New(cfg)
	if err != nil {
		return err
	}
	_, err = a.AllocateNetwork(req)
	return err
}

func (a *Allocator) allocateNetwork(req Network) (Network, error) {
	if req.ID == "" || req.Name == "" {
		return Network{}, fmt.Errorf("%w: a network needs an id and a name", ErrInvalid)
	}
	if _, ok := a.networks[req.ID]; ok {
		return Network{}, fmt.Errorf("%w: id %s already exists", ErrConflict, req.ID)
	}
	for _, n := range a.sortedNetworks() {
		if n.Name == req.Name {
			return Network{}, fmt.Errorf("%w: name %s is taken by network %s", ErrConflict, req.Name, n.ID)
		}
		if req.Ingress && n.Ingress {
			return Network{}, fmt.Errorf("%w: the cluster already has an ingress network, %s", ErrConflict, n.Name)
		}
	}
	if req.Gateway.IsValid() && !req.Subnet.IsValid() {
		return Network{}, fmt.Errorf("%w: gateway %s needs a subnet", ErrInvalid, req.Gateway)
	}

	var u undo
	ok := false
	defer func() {
		if !ok {
			u.run()
		}
	}()
	if req.Subnet.IsValid() {
		if err := ipam.CheckSubnet(req.Subnet); err != nil {
			return Network{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		for _, n := range a.sortedNetworks() {
			if ipam.Overlaps(n.Subnet, req.Subnet) {
				return Network{}, fmt.Errorf("%w: subnet %s overlaps network %s (%s)", ErrConflict, req.Subnet, n.Name, n.Subnet)
			}
		}
		if err := a.pool.Reserve(req.Subnet); err != nil {
			return Network{}, fmt.Errorf("%w: %w", ErrConflict, err)
		}
	} else {
		s, err := a.pool.Allocate()
		if err != nil {
			return Network{}, fmt.Errorf("%w: %w", ErrExhausted, err)
		}
		req.Subnet = s
	}
	u.add(func() { a.pool.Release(req.Subnet) })

	ips, err := ipam.NewAllocator(req.Subnet, req.Gateway)
	if err != nil {
		return Network{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	req.Gateway = ips.Gateway()

	if req.VNI != 0 {
		if err := a.vnis.AllocateSpecific(req.VNI); err != nil {
			if errors.Is(err, ipam.ErrInUse) {
				return Network{}, fmt.Errorf("%w: VNI %d is used by network %s", ErrConflict, req.VNI, a.networkWithVNI(req.VNI))
			}
			return Network{}, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	} else {
		v, err := a.vnis.Allocate()
		if err != nil {
			return Network{}, fmt.Errorf("%w: %w", ErrExhausted, err)
		}
		req.VNI = v
	}
	ok = true
	a.networks[req.ID] = &network{Network: req, ips: ips}
	return req, nil
}

func (a *Allocator) networkWithVNI(vni uint32) string {
	for _, n := range a.networks {
		if n.VNI == vni {
			return n.Name
		}
	}
	return "(unknown)"
}

// ReleaseNetwork frees a network's subnet and VNI. A network that a
// service, task or node still uses is refused, naming the user. Releasing
// an unknown network does nothing.
func (a *Allocator) ReleaseNetwork(id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.networks[id]
	if !ok {
		return nil
	}
	var users []string
	for _, s := range sortedValues(a.services, func(s ServiceAllocation) string { return s.ServiceID }) {
		if slices.Contains(s.Networks, id) {
			users = append(users, "service "+cmp.Or(s.Name, s.ServiceID))
		}
	}
	for _, t := range sortedValues(a.tasks, func(t TaskAllocation) string { return t.TaskID }) {
		if slices.ContainsFunc(t.Attachments, func(at Attachment) bool { return at.NetworkID == id }) {
			users = append(users, "task "+t.TaskID)
		}
	}
	if n.Ingress {
		for _, nd := range sortedValues(a.nodes, func(n NodeAllocation) string { return n.NodeID }) {
			users = append(users, "node "+nd.NodeID)
		}
	}
	if len(users) > 0 {
		more := ""
		if len(users) > 1 {
			more = fmt.Sprintf(" and %d more", len(users)-1)
		}
		return fmt.Errorf("release network %s: %w: in use by %s%s; remove them first", n.Name, ErrConflict, users[0], more)
	}
	a.pool.Release(n.Subnet)
	// The VNI was allocated or restored with this network, so releasing it
	// cannot fail while the bookkeeping is sound.
	_ = a.vnis.Release(n.VNI)
	delete(a.networks, id)
	return nil
}

// lookupNetwork finds a network by id, then by name.
func (a *Allocator) lookupNetwork(ref string) (*network, error) {
	if n, ok := a.networks[ref]; ok {
		return n, nil
	}
	for _, n := range a.networks {
		if n.Name == ref {
			return n, nil
		}
	}
	return nil, fmt.Errorf("%w: network %q", ErrNotFound, ref)
}

func (a *Allocator) ingress() *network {
	for _, n := range a.networks {
		if n.Ingress {
			return n
		}
	}
	return nil
}

// AllocateService gives a service a VIP on each of its networks (none in
// dnsrr mode) and its published ports. Calling it again for an allocated
// service updates the allocation: VIPs on networks it keeps and published
// ports it keeps (an automatic port keeps its number when protocol and
// target are unchanged) stay the same, the rest is freed.
func (a *Allocator) AllocateService(req ServiceNeeds) (ServiceAllocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, err := a.allocateService(req)
	if err != nil {
		return ServiceAllocation{}, fmt.Errorf("allocate service %s: %w", cmp.Or(req.Name, req.ID), err)
	}
	return s.clone(), nil
}

func (a *Allocator) allocateService(req ServiceNeeds) (ServiceAllocation, error) {
	if req.ID == "" {
		return ServiceAllocation{}, fmt.Errorf("%w: a service needs an id", ErrInvalid)
	}
	mode := cmp.Or(req.EndpointMode, EndpointModeVIP)
	if mode != EndpointModeVIP && mode != EndpointModeDNSRR {
		return ServiceAllocation{}, fmt.Errorf("%w: endpoint mode %q: want vip or dnsrr", ErrInvalid, req.EndpointMode)
	}
	old, hadOld := a.services[req.ID]

	var nets []*network
	for _, ref := range req.Networks {
		n, err := a.lookupNetwork(ref)
		if err != nil {
			return ServiceAllocation{}, err
		}
		if n.Ingress {
			return ServiceAllocation{}, fmt.Errorf("%w: network %s is the routing mesh; it is attached by publishing a port, not by name", ErrInvalid, n.Name)
		}
		if !slices.Contains(nets, n) {
			nets = append(nets, n)
		}
	}

	var ports []PortConfig
	// Any published port attaches the service to ingress: the nodes DNAT
	// host-mode ports to the task's ingress address too. Only ingress-mode
	// ports need a VIP there.
	publishes, ingressVIP := false, false
	seen := map[portKey]bool{}
	for _, p := range req.Ports {
		p, err := p.normalized()
		if err != nil {
			return ServiceAllocation{}, err
		}
		if p.Published != 0 {
			k := portKey{p.Protocol, p.Published}
			if seen[k] {
				return ServiceAllocation{}, fmt.Errorf("%w: port %s is published twice", ErrInvalid, k)
			}
			seen[k] = true
		}
		publishes = true
		ingressVIP = ingressVIP || p.Mode == api.ModeIngress
		ports = append(ports, p)
	}
	if publishes {
		if ingressVIP && mode == EndpointModeDNSRR {
			return ServiceAllocation{}, fmt.Errorf("%w: ports published in ingress mode need a VIP, so they cannot be used with endpoint mode dnsrr; publish them with mode=host", ErrInvalid)
		}
		in := a.ingress()
		if in == nil {
			return ServiceAllocation{}, fmt.Errorf("%w: the cluster has no ingress network to publish ports on", ErrNotFound)
		}
		nets = append(nets, in)
	}

	// Published ports: explicit ones first, so an automatic pick never takes
	// a port the same request names.
	claimed := map[portKey]bool{}
	for _, p := range ports {
		if p.Mode != api.ModeIngress || p.Published == 0 {
			continue
		}
		k := portKey{p.Protocol, p.Published}
		if holder, ok := a.ports[k]; ok && holder != req.ID {
			return ServiceAllocation{}, fmt.Errorf("%w: published port %s is already used by service %s", ErrConflict, k, cmp.Or(a.services[holder].Name, holder))
		}
		claimed[k] = true
	}
	cursor := a.nextPort
	for i, p := range ports {
		if p.Mode != api.ModeIngress || p.Published != 0 {
			continue
		}
		if prev, ok := keptPort(old, p, claimed); ok {
			ports[i].Published = prev
			claimed[portKey{p.Protocol, prev}] = true
			continue
		}
		port, next, err := a.pickPort(p.Protocol, cursor, claimed)
		if err != nil {
			return ServiceAllocation{}, err
		}
		ports[i].Published, cursor = port, next
		claimed[portKey{p.Protocol, port}] = true
	}

	var u undo
	ok := false
	defer func() {
		if !ok {
			u.run()
		}
	}()
	s := ServiceAllocation{ServiceID: req.ID, Name: req.Name, EndpointMode: mode, Ports: ports}
	for _, n := range nets {
		s.Networks = append(s.Networks, n.ID)
		if mode != EndpointModeVIP || (n.Ingress && !ingressVIP) {
			continue
		}
		if i := slices.IndexFunc(old.VIPs, func(v VIP) bool { return v.NetworkID == n.ID }); i >= 0 {
			s.VIPs = append(s.VIPs, old.VIPs[i])
			continue
		}
		addr, err := n.ips.Allocate()
		if err != nil {
			return ServiceAllocation{}, fmt.Errorf("%w: VIP on network %s: %w", ErrExhausted, n.Name, err)
		}
		u.add(func() { _ = n.ips.Release(addr) })
		s.VIPs = append(s.VIPs, VIP{NetworkID: n.ID, Addr: netip.PrefixFrom(addr, n.Subnet.Bits())})
	}
	ok = true

	if hadOld {
		a.releaseServiceParts(old, s)
	}
	for k := range claimed {
		a.ports[k] = req.ID
	}
	a.nextPort = cursor
	a.services[req.ID] = s
	return s, nil
}

// keptPort returns the published port an updated service keeps for an
// automatic port: the one it had for the same protocol and target.
func keptPort(old ServiceAllocation, p PortConfig, claimed map[portKey]bool) (uint16, bool) {
	for _, o := range old.Ports {
		if o.Mode == api.ModeIngress && o.Protocol == p.Protocol && o.Target == p.Target && o.Published != 0 && !claimed[portKey{o.Protocol, o.Published}] {
			return o.Published, true
		}
	}
	return 0, false
}

// pickPort returns the first free port at or after cursor, wrapping once,
// and the cursor after it. It changes nothing.
func (a *Allocator) pickPort(protocol string, cursor uint16, claimed map[portKey]bool) (uint16, uint16, error) {
	lo, hi := a.cfg.MinPort, a.cfg.MaxPort
	n := int(hi-lo) + 1
	p := cursor
	for range n {
		if p < lo || p > hi {
			p = lo
		}
		k := portKey{protocol, p}
		if _, used := a.ports[k]; !used && !claimed[k] {
			next := p + 1
			if p == hi {
				next = lo
			}
			return p, next, nil
		}
		p++
	}
	return 0, 0, fmt.Errorf("%w: every %s port from %d to %d is published", ErrExhausted, protocol, lo, hi)
}

// releaseServiceParts frees what old holds and keep does not.
func (a *Allocator) releaseServiceParts(old, keep ServiceAllocation) {
	for _, v := range old.VIPs {
		if slices.Contains(keep.VIPs, v) {
			continue
		}
		if n, ok := a.networks[v.NetworkID]; ok {
			// Allocated or restored with the service: cannot fail.
			_ = n.ips.Release(v.Addr.Addr())
		}
	}
	for _, p := range old.Ports {
		if p.Mode != api.ModeIngress {
			continue
		}
		k := portKey{p.Protocol, p.Published}
		if a.ports[k] == old.ServiceID && !slices.Contains(keep.Ports, p) {
			delete(a.ports, k)
		}
	}
}

// ReleaseService frees a service's VIPs and published ports. Releasing an
// unknown service does nothing.
func (a *Allocator) ReleaseService(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	old, ok := a.services[id]
	if !ok {
		return
	}
	a.releaseServiceParts(old, ServiceAllocation{})
	delete(a.services, id)
}

// AllocateTask gives a task an address and MAC on each of its networks and
// each network of its service. The service must be allocated first. A task
// already allocated gets its allocation back unchanged: tasks never change.
func (a *Allocator) AllocateTask(req TaskNeeds) (TaskAllocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, err := a.allocateTask(req)
	if err != nil {
		return TaskAllocation{}, fmt.Errorf("allocate task %s: %w", req.ID, err)
	}
	return t.clone(), nil
}

func (a *Allocator) allocateTask(req TaskNeeds) (TaskAllocation, error) {
	if req.ID == "" {
		return TaskAllocation{}, fmt.Errorf("%w: a task needs an id", ErrInvalid)
	}
	if t, ok := a.tasks[req.ID]; ok {
		return t, nil
	}
	var nets []*network
	for _, ref := range req.Networks {
		n, err := a.lookupNetwork(ref)
		if err != nil {
			return TaskAllocation{}, err
		}
		if !slices.Contains(nets, n) {
			nets = append(nets, n)
		}
	}
	if req.ServiceID != "" {
		s, ok := a.services[req.ServiceID]
		if !ok {
			return TaskAllocation{}, fmt.Errorf("%w: service %s is not allocated; allocate it before its tasks", ErrNotFound, req.ServiceID)
		}
		for _, id := range s.Networks {
			if n := a.networks[id]; n != nil && !slices.Contains(nets, n) {
				nets = append(nets, n)
			}
		}
	}

	var u undo
	ok := false
	defer func() {
		if !ok {
			u.run()
		}
	}()
	t := TaskAllocation{TaskID: req.ID, ServiceID: req.ServiceID, NodeID: req.NodeID}
	for _, n := range nets {
		addr, err := n.ips.Allocate()
		if err != nil {
			return TaskAllocation{}, fmt.Errorf("%w: address on network %s: %w", ErrExhausted, n.Name, err)
		}
		u.add(func() { _ = n.ips.Release(addr) })
		t.Attachments = append(t.Attachments, attachment(n, addr))
	}
	ok = true
	a.tasks[req.ID] = t
	return t, nil
}

func attachment(n *network, addr netip.Addr) Attachment {
	return Attachment{NetworkID: n.ID, Addr: netip.PrefixFrom(addr, n.Subnet.Bits()), MAC: ipam.MACFromIP(addr)}
}

// ReleaseTask frees a task's addresses. Releasing an unknown task does nothing.
func (a *Allocator) ReleaseTask(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.tasks[id]
	if !ok {
		return
	}
	a.releaseAttachments(t.Attachments)
	delete(a.tasks, id)
}

func (a *Allocator) releaseAttachments(ats []Attachment) {
	for _, at := range ats {
		if n, ok := a.networks[at.NetworkID]; ok {
			// Allocated or restored with the owner: cannot fail.
			_ = n.ips.Release(at.Addr.Addr())
		}
	}
}

// AllocateNode gives a node its address on the ingress network. A node
// already allocated gets its allocation back.
func (a *Allocator) AllocateNode(nodeID string) (NodeAllocation, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if nodeID == "" {
		return NodeAllocation{}, fmt.Errorf("allocate node: %w: a node needs an id", ErrInvalid)
	}
	if nd, ok := a.nodes[nodeID]; ok {
		return nd.clone(), nil
	}
	in := a.ingress()
	if in == nil {
		return NodeAllocation{}, fmt.Errorf("allocate node %s: %w: the cluster has no ingress network", nodeID, ErrNotFound)
	}
	addr, err := in.ips.Allocate()
	if err != nil {
		return NodeAllocation{}, fmt.Errorf("allocate node %s: %w: address on network %s: %w", nodeID, ErrExhausted, in.Name, err)
	}
	nd := NodeAllocation{NodeID: nodeID, Ingress: attachment(in, addr)}
	a.nodes[nodeID] = nd
	return nd.clone(), nil
}

// ReleaseNode frees a node's ingress address. Releasing an unknown node
// does nothing.
func (a *Allocator) ReleaseNode(nodeID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	nd, ok := a.nodes[nodeID]
	if !ok {
		return
	}
	a.releaseAttachments([]Attachment{nd.Ingress})
	delete(a.nodes, nodeID)
}

// Network returns an allocated network by id or name.
func (a *Allocator) Network(ref string) (Network, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := a.lookupNetwork(ref)
	if err != nil {
		return Network{}, false
	}
	return n.Network, true
}

// Service returns a service's allocation.
func (a *Allocator) Service(id string) (ServiceAllocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.services[id]
	return s.clone(), ok
}

// Task returns a task's allocation.
func (a *Allocator) Task(id string) (TaskAllocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t, ok := a.tasks[id]
	return t.clone(), ok
}

// Node returns a node's allocation.
func (a *Allocator) Node(id string) (NodeAllocation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n, ok := a.nodes[id]
	return n.clone(), ok
}

// State returns every allocation, each list sorted by id.
func (a *Allocator) State() Allocation {
	a.mu.Lock()
	defer a.mu.Unlock()
	var st Allocation
	for _, n := range a.sortedNetworks() {
		st.Networks = append(st.Networks, n.Network)
	}
	for _, s := range sortedValues(a.services, func(s ServiceAllocation) string { return s.ServiceID }) {
		st.Services = append(st.Services, s.clone())
	}
	for _, t := range sortedValues(a.tasks, func(t TaskAllocation) string { return t.TaskID }) {
		st.Tasks = append(st.Tasks, t.clone())
	}
	for _, n := range sortedValues(a.nodes, func(n NodeAllocation) string { return n.NodeID }) {
		st.Nodes = append(st.Nodes, n.clone())
	}
	return st
}

func (a *Allocator) sortedNetworks() []*network {
	return sortedValues(a.networks, func(n *network) string { return n.ID })
}

func sortedValues[V any](m map[string]V, id func(V) string) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.SortFunc(out, func(x, y V) int { return cmp.Compare(id(x), id(y)) })
	return out
}
