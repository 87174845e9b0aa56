package dispatcher

import (
	"cmp"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// netView is what one node needs to know of the cluster's networks to
// build its overlays, load balancers and DNS, keyed by id. It is computed
// from the store, whole, for each batch of changes that may concern it;
// what a stream sent is kept as a netView so that it sends only the
// difference.
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
//     it runs and is meant to, so a task told to stop leaves the load
//     balancers in the same message that tells its node to stop it.
//   - services: every service with a VIP or network on these networks, or
//     a published port.
//
// It reads every task, node and service: O(cluster) per call.
func viewOf(tx store.ReadTx, nodeID string) netView {
	v := netView{
		networks:  map[string]*api.Network{},
		peers:     map[string]*api.NetworkPeer{},
		endpoints: map[string]*api.NetworkEndpoint{},
		services:  map[string]*api.ServiceEndpoint{},
	}
	byID := map[string]*api.Network{}
	for _, n := range tx.Networks() {
		byID[n.GetId()] = n
		if n.GetIngress() {
			v.networks[n.GetId()] = n
		}
	}
	for _, t := range tx.TasksOfNode(nodeID) {
		if !assigned(t, nodeID) || !hasAddress(t) {
			continue
		}
		for _, at := range t.GetNetworks() {
			if n := byID[at.GetNetworkId()]; n != nil {
				v.networks[n.GetId()] = n
			}
		}
	}
	for _, n := range tx.Nodes() {
		if addr := n.GetDescription().GetDataAddr(); addr != "" {
			v.peers[n.GetId()] = &api.NetworkPeer{NodeId: n.GetId(), DataAddr: addr, Ingress: n.GetIngress()}
		}
	}
	for _, t := range tx.Tasks() {
		if !hasAddress(t) {
			continue
		}
		var ats []*api.NetworkAttachment
		for _, at := range t.GetNetworks() {
			if v.networks[at.GetNetworkId()] != nil {
				ats = append(ats, at)
			}
		}
		if len(ats) == 0 {
			continue
		}
		v.endpoints[t.GetId()] = &api.NetworkEndpoint{
			TaskId: t.GetId(), NodeId: t.GetNodeId(), ServiceId: t.GetServiceId(), Networks: ats,
			Serving: t.GetStatus().GetState() == api.TaskState_TASK_STATE_RUNNING && t.GetDesiredState() == api.TaskState_TASK_STATE_RUNNING,
		}
	}
	for _, svc := range tx.Services() {
		ep := svc.GetEndpoint()
		if ep == nil {
			continue
		}
		on := len(ep.GetPorts()) > 0 ||
			slices.ContainsFunc(ep.GetVips(), func(vip *api.EndpointVIP) bool { return v.networks[vip.GetNetworkId()] != nil }) ||
			slices.ContainsFunc(ep.GetNetworks(), func(id string) bool { return v.networks[id] != nil })
		if !on {
			continue
		}
		v.services[svc.GetId()] = &api.ServiceEndpoint{
			ServiceId: svc.GetId(), Name: svc.GetSpec().GetName(),
			Mode: cmp.Or(svc.GetSpec().GetEndpoint().GetMode(), "vip"), Endpoint: ep,
		}
	}
	return v
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
// nodes joining, leaving or changing their data or ingress address.
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
			!proto.Equal(o.GetIngress(), old.GetIngress())
	}
	return false
}
