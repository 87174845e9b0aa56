package netagent

import (
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// view is the node's network view: the merge of every NetworkDelta since
// the last full one, keyed as the delta keys them.
type view struct {
	networks  map[string]*api.Network         // by network id
	peers     map[string]*api.NetworkPeer     // by node id
	endpoints map[string]*api.NetworkEndpoint // by task id
	services  map[string]*api.ServiceEndpoint // by service id
}

func newView() *view {
	return &view{
		networks:  map[string]*api.Network{},
		peers:     map[string]*api.NetworkPeer{},
		endpoints: map[string]*api.NetworkEndpoint{},
		services:  map[string]*api.ServiceEndpoint{},
	}
}

// merge applies d: with full, d is the whole view. Removals go before
// upserts, so an item both removed and listed in one delta stays (listed
// means "this is it now"). Items are cloned: the caller may reuse its
// messages.
func (v *view) merge(d *api.NetworkDelta, full bool) {
	if full {
		*v = *newView()
	}
	if d == nil {
		return
	}
	for _, id := range d.GetRemovedNetworks() {
		delete(v.networks, id)
	}
	for _, id := range d.GetRemovedPeers() {
		delete(v.peers, id)
	}
	for _, id := range d.GetRemovedEndpoints() {
		delete(v.endpoints, id)
	}
	for _, id := range d.GetRemovedServices() {
		delete(v.services, id)
	}
	for _, n := range d.GetNetworks() {
		if n.GetId() != "" {
			v.networks[n.GetId()] = proto.CloneOf(n)
		}
	}
	for _, p := range d.GetPeers() {
		if p.GetNodeId() != "" {
			v.peers[p.GetNodeId()] = proto.CloneOf(p)
		}
	}
	for _, e := range d.GetEndpoints() {
		if e.GetTaskId() != "" {
			v.endpoints[e.GetTaskId()] = proto.CloneOf(e)
		}
	}
	for _, s := range d.GetServices() {
		if s.GetServiceId() != "" {
			v.services[s.GetServiceId()] = proto.CloneOf(s)
		}
	}
}
