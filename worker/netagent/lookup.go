package netagent

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// dnsIndex answers the resolver's lookups from one view. It is immutable,
// so lookups run without locks while Apply builds the next one.
type dnsIndex struct {
	// asker maps a task address to the networks (by id) that task is on,
	// ingress excluded: service names are scoped to the networks a task
	// shares with the service, as in Docker.
	asker map[netip.Addr][]string
	// services by lower-case name.
	services map[string]*dnsService
}

type dnsService struct {
	dnsrr bool
	// vips and tasks by network id; tasks are the serving ones, in task id
	// order.
	vips  map[string][]netip.Addr
	tasks map[string][]netip.Addr
	// networks the service is on (endpoint networks and VIP networks).
	networks map[string]bool
}

func newDNSIndex(v *view, nets map[string]*network, eps map[string]*endpoint, ingress *network, serving map[string][]*endpoint) *dnsIndex {
	ingressID := ""
	if ingress != nil {
		ingressID = ingress.api.GetId()
	}
	x := &dnsIndex{asker: map[netip.Addr][]string{}, services: map[string]*dnsService{}}
	for _, tid := range slices.Sorted(maps.Keys(eps)) {
		for _, a := range eps[tid].addrs {
			if a.network != ingressID {
				x.asker[a.addr] = append(x.asker[a.addr], a.network)
			}
		}
	}
	for _, sid := range slices.Sorted(maps.Keys(v.services)) {
		s := v.services[sid]
		name := strings.ToLower(s.GetName())
		if name == "" {
			continue
		}
		ds := &dnsService{
			dnsrr:    strings.EqualFold(s.GetMode(), endpointDNSRR),
			vips:     map[string][]netip.Addr{},
			tasks:    map[string][]netip.Addr{},
			networks: map[string]bool{},
		}
		for _, n := range s.GetEndpoint().GetNetworks() {
			if n != ingressID {
				ds.networks[n] = true
			}
		}
		for _, vip := range s.GetEndpoint().GetVips() {
			if vip.GetNetworkId() == ingressID {
				continue
			}
			if addr, err := parseVIP(vip.GetAddr()); err == nil {
				ds.vips[vip.GetNetworkId()] = append(ds.vips[vip.GetNetworkId()], addr)
				ds.networks[vip.GetNetworkId()] = true
			}
		}
		for _, ep := range serving[sid] {
			for _, a := range ep.addrs {
				if a.network != ingressID {
					ds.tasks[a.network] = append(ds.tasks[a.network], a.addr)
				}
			}
		}
		x.services[name] = ds
	}
	return x
}

// lookup implements the resolver's Lookup: "<service>" is the service's
// VIPs (a dnsrr service's task addresses) and "tasks.<service>" its serving
// tasks' addresses, on the networks the asking task (found by its source
// address) shares with the service. ok=false means not ours: the resolver
// forwards the question upstream.
func (x *dnsIndex) lookup(src netip.Addr, name string) ([]netip.Addr, bool) {
	if x == nil {
		return nil, false
	}
	nets, ok := x.asker[src.Unmap()]
	if !ok {
		return nil, false
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	svcName, tasks := name, false
	if rest, found := strings.CutPrefix(name, "tasks."); found {
		svcName, tasks = rest, true
	}
	s, ok := x.services[svcName]
	if !ok {
		return nil, false
	}
	shared := false
	var addrs []netip.Addr
	for _, n := range nets {
		if !s.networks[n] {
			continue
		}
		shared = true
		if tasks || s.dnsrr {
			addrs = append(addrs, s.tasks[n]...)
		} else {
			addrs = append(addrs, s.vips[n]...)
		}
	}
	if !shared {
		return nil, false
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs), true
}
