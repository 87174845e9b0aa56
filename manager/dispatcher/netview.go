package dispatcher

import (
	"bytes"
	"cmp"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// netView is what one node needs to know of the cluster's networks to
// build its overlays, load balancers and DNS, keyed by id. A stream keeps
// what it sent as a netView, brings it up to date with each batch of
// changes (update) and sends only the difference.
type netView struct {
	networks  map[string]*api.Network
	peers     map[string]*api.NetworkPeer
	endpoints map[string]*api.NetworkEndpoint
	services  map[string]*api.ServiceEndpoint
}

// hasAddress reports whether a task may have a live interface: it was
// placed (its node may have started it) and has not ended.
func hasAddress(t *api.Task) bool {
	return len(t.GetNetworks()) > 0 && t.GetNodeId() != "" &&
		t.GetStatus().GetState() >= api.TaskState_TASK_STATE_ASSIGNED && !api.IsTerminal(t.GetStatus().GetState())
}

// viewOf computes nodeID's network view:
//   - networks: ingress, always, and every network one of the node's
//     tasks that has not ended is attached to. The services the node
//     balances for are those with an endpoint on these networks (ingress
//     for published ports), so they add no network of their own.
//   - peers: every node with a data address, this one included.
//   - endpoints: every task on any node that may have an interface on one
//     of these networks, with only those attachments; serving only while
//     it runs, has passed its health check if it has one, and is meant to
//     run (api.Serving), so a task joins the load balancers once it can
//     answer, and a task told to stop leaves them in the same message that
//     tells its node to stop it.
//   - services: every service with a VIP or network on these networks, or
//     a published port.
//
// It reads every task, node and service: O(cluster) per call, so streams
// call it for FULL messages and network changes only, and otherwise keep
// their view with update, in O(changes).
func viewOf(tx store.ReadTx, nodeID string) netView {
	v := netView{
		networks:  networksOf(tx, nodeID),
		peers:     map[string]*api.NetworkPeer{},
		endpoints: map[string]*api.NetworkEndpoint{},
		services:  map[string]*api.ServiceEndpoint{},
	}
	for _, n := range tx.Nodes() {
		if p := peerOf(n); p != nil {
			v.peers[n.GetId()] = p
		}
	}
	for _, t := range tx.Tasks() {
		if e := v.endpointOf(t); e != nil {
			v.endpoints[t.GetId()] = e
		}
	}
	for _, svc := range tx.Services() {
		if e := v.serviceOf(svc); e != nil {
			v.services[svc.GetId()] = e
		}
	}
	return v
}

// networksOf is the networks part of nodeID's view: ingress and the
// networks of the node's tasks that have not ended.
func networksOf(tx store.ReadTx, nodeID string) map[string]*api.Network {
	out := map[string]*api.Network{}
	byID := map[string]*api.Network{}
	for _, n := range tx.Networks() {
		byID[n.GetId()] = n
		if n.GetIngress() {
			out[n.GetId()] = n
		}
	}
	for _, t := range tx.TasksOfNode(nodeID) {
		if !assigned(t, nodeID) || !hasAddress(t) {
			continue
		}
		for _, at := range t.GetNetworks() {
			if n := byID[at.GetNetworkId()]; n != nil {
				out[n.GetId()] = n
			}
		}
	}
	return out
}

// peerOf is a node's peer entry, with its WireGuard key when it reports
// one; nil without a data address.
func peerOf(n *api.Node) *api.NetworkPeer {
	addr := n.GetDescription().GetDataAddr()
	if n == nil || addr == "" {
		return nil
	}
	return &api.NetworkPeer{NodeId: n.GetId(), DataAddr: addr, Ingress: n.GetIngress(), WireguardKey: n.GetDescription().GetWireguardKey()}
}

// endpointOf is a task's endpoint in v (its attachments on v's networks);
// nil when it has none or no live interface.
func (v netView) endpointOf(t *api.Task) *api.NetworkEndpoint {
	if !hasAddress(t) {
		return nil
	}
	var ats []*api.NetworkAttachment
	for _, at := range t.GetNetworks() {
		if v.networks[at.GetNetworkId()] != nil {
			ats = append(ats, at)
		}
	}
	if len(ats) == 0 {
		return nil
	}
	return &api.NetworkEndpoint{
		TaskId: t.GetId(), NodeId: t.GetNodeId(), ServiceId: t.GetServiceId(), Networks: ats,
		Serving: api.Serving(t),
	}
}

// serviceOf is a service's entry in v: services with a published port or
// a VIP or network among v's networks; nil otherwise.
func (v netView) serviceOf(svc *api.Service) *api.ServiceEndpoint {
	ep := svc.GetEndpoint()
	if ep == nil {
		return nil
	}
	on := len(ep.GetPorts()) > 0 ||
		slices.ContainsFunc(ep.GetVips(), func(vip *api.EndpointVIP) bool { return v.networks[vip.GetNetworkId()] != nil }) ||
		slices.ContainsFunc(ep.GetNetworks(), func(id string) bool { return v.networks[id] != nil })
	if !on {
		return nil
	}
	return &api.ServiceEndpoint{
		ServiceId: svc.GetId(), Name: svc.GetSpec().GetName(),
		Mode: cmp.Or(svc.GetSpec().GetEndpoint().GetMode(), "vip"), Endpoint: ep,
	}
}

// netChanges are the ids of the objects a batch of store events changed
// that may concern network views.
type netChanges struct {
	networks bool // any network: the whole view is recomputed
	tasks    map[string]bool
	services map[string]bool
	nodes    map[string]bool
	// ofNode is set when a task of the node itself changed, which may
	// change the node's set of networks.
	ofNode bool
}

func newNetChanges() netChanges {
	return netChanges{tasks: map[string]bool{}, services: map[string]bool{}, nodes: map[string]bool{}}
}

// note records ev if it may change some node's view (see affectsNetworks).
func (c *netChanges) note(ev store.Event, nodeID string) {
	if !affectsNetworks(ev) {
		return
	}
	switch o := ev.Object.(type) {
	case *api.Network:
		c.networks = true
	case *api.Service:
		c.services[o.GetId()] = true
	case *api.Task:
		c.tasks[o.GetId()] = true
		old, _ := ev.Old.(*api.Task)
		c.ofNode = c.ofNode || o.GetNodeId() == nodeID || old.GetNodeId() == nodeID
	case *api.Node:
		c.nodes[o.GetId()] = true
	}
}

func (c netChanges) empty() bool {
	return !c.networks && len(c.tasks) == 0 && len(c.services) == 0 && len(c.nodes) == 0
}

// update brings the view a stream sent up to date with the changes and
// returns the delta, in O(changes): only the changed objects are read
// again. A change of the networks themselves, or of the node's own set of
// networks (its first task on a network, its last one leaving), makes it
// recompute the whole view instead.
func (v *netView) update(tx store.ReadTx, nodeID string, c netChanges) *api.NetworkDelta {
	sameNetworks := func(_, _ *api.Network) bool { return true } // a changed network sets c.networks
	if c.networks || (c.ofNode && !maps.EqualFunc(networksOf(tx, nodeID), v.networks, sameNetworks)) {
		view := viewOf(tx, nodeID)
		d := view.delta(*v)
		*v = view
		return d
	}
	d := &api.NetworkDelta{}
	for _, id := range slices.Sorted(maps.Keys(c.nodes)) {
		d.Peers, d.RemovedPeers = refresh(v.peers, id, peerOf(tx.Node(id)), d.Peers, d.RemovedPeers)
	}
	for _, id := range slices.Sorted(maps.Keys(c.tasks)) {
		var e *api.NetworkEndpoint
		if t := tx.Task(id); t != nil {
			e = v.endpointOf(t)
		}
		d.Endpoints, d.RemovedEndpoints = refresh(v.endpoints, id, e, d.Endpoints, d.RemovedEndpoints)
	}
	for _, id := range slices.Sorted(maps.Keys(c.services)) {
		var e *api.ServiceEndpoint
		if svc := tx.Service(id); svc != nil {
			e = v.serviceOf(svc)
		}
		d.Services, d.RemovedServices = refresh(v.services, id, e, d.Services, d.RemovedServices)
	}
	return d
}

// refresh sets sent[id] to cur (nil: absent) and appends to changed or
// removed what the worker must hear of it.
func refresh[T interface {
	proto.Message
	comparable
}](sent map[string]T, id string, cur T, changed []T, removed []string) ([]T, []string) {
	var zero T
	old, had := sent[id]
	switch {
	case cur == zero && had:
		delete(sent, id)
		removed = append(removed, id)
	case cur != zero && (!had || !proto.Equal(old, cur)):
		sent[id] = cur
		changed = append(changed, cur)
	}
	return changed, removed
}

// delta returns what turns old (the zero netView for a full view) into v.
func (v netView) delta(old netView) *api.NetworkDelta {
	d := &api.NetworkDelta{}
	d.Networks, d.RemovedNetworks = diff(old.networks, v.networks)
	d.Peers, d.RemovedPeers = diff(old.peers, v.peers)
	d.Endpoints, d.RemovedEndpoints = diff(old.endpoints, v.endpoints)
	d.Services, d.RemovedServices = diff(old.services, v.services)
	return d
}

// diff lists, in id order, the items of cur that old lacks or holds
// differently, and the ids of old that cur lacks.
func diff[T proto.Message](old, cur map[string]T) (changed []T, removed []string) {
	for _, id := range slices.Sorted(maps.Keys(cur)) {
		if o, ok := old[id]; !ok || !proto.Equal(o, cur[id]) {
			changed = append(changed, cur[id])
		}
	}
	for _, id := range slices.Sorted(maps.Keys(old)) {
		if _, ok := cur[id]; !ok {
			removed = append(removed, id)
		}
	}
	return changed, removed
}

// emptyDelta reports whether d changes nothing.
func emptyDelta(d *api.NetworkDelta) bool {
	return len(d.GetNetworks()) == 0 && len(d.GetRemovedNetworks()) == 0 &&
		len(d.GetPeers()) == 0 && len(d.GetRemovedPeers()) == 0 &&
		len(d.GetEndpoints()) == 0 && len(d.GetRemovedEndpoints()) == 0 &&
		len(d.GetServices()) == 0 && len(d.GetRemovedServices()) == 0
}

// affectsNetworks matches the events that may change some node's network
// view: networks and services with an endpoint, tasks with addresses,
// nodes joining, leaving or changing their data or ingress address or
// their WireGuard key (the key lives only in the node's kernel: after a
// reboot the node makes a new pair, and every peer must encrypt to the new
// one, or gets it for the first time when the node gains WireGuard).
// Everything else (status reports of tasks without networks, heartbeat
// bookkeeping) leaves every view as it was, so it costs no recomputation.
func affectsNetworks(ev store.Event) bool {
	switch o := ev.Object.(type) {
	case *api.Network:
		return true
	case *api.Service:
		old, _ := ev.Old.(*api.Service)
		return o.GetEndpoint() != nil || old.GetEndpoint() != nil
	case *api.Task:
		old, _ := ev.Old.(*api.Task)
		return len(o.GetNetworks()) > 0 || len(old.GetNetworks()) > 0
	case *api.Node:
		old, _ := ev.Old.(*api.Node)
		return ev.Kind != api.StoreActionKind_STORE_ACTION_KIND_UPDATE ||
			o.GetDescription().GetDataAddr() != old.GetDescription().GetDataAddr() ||
			!bytes.Equal(o.GetDescription().GetWireguardKey(), old.GetDescription().GetWireguardKey()) ||
			!proto.Equal(o.GetIngress(), old.GetIngress())
	}
	return false
}
