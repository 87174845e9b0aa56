package netagent

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/ipam"
	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/overlay"
)

// desired is the kernel state a view asks of a node.
type desired struct {
	// overlays, by network id.
	overlays []overlay.NetworkState
	// tunnel is the WireGuard tunnel of the encrypted overlays: active
	// when there is one, with every other node that has a key as a peer.
	tunnel overlay.TunnelState
	// subnets to masquerade egress for, sorted.
	subnets []netip.Prefix
	lb      lb.State
	// dnsAddrs are where the resolver listens, and whom it answers: every
	// network's gateway, which the network's bridge carries, with the
	// network's prefix length (10.0.1.1/24). Sorted.
	dnsAddrs []netip.Prefix
	// guard is the nftables guard of the overlays and the resolver.
	guard guardState
	// vips are the VIPs of the load balancer's frontends, sorted: the node
	// holds them so that tasks' ARP for them is answered.
	vips []netip.Addr
	dns  *dnsIndex
	// problems are items of the view that could not be used (bad addresses,
	// clashing ports); the rest is applied regardless.
	problems []error
}

// Port modes and traffic policies as PortConfig spells them.
const (
	modeIngress    = "ingress"
	modeHost       = "host"
	trafficCluster = "cluster"
	trafficLocal   = "local"
	endpointDNSRR  = "dnsrr"
)

// network is a view network with its addresses parsed.
type network struct {
	api     *api.Network
	subnet  netip.Prefix
	gateway netip.Addr
}

// attachment is a parsed NetworkAttachment.
type attachment struct {
	network string
	addr    netip.Addr
	prefix  netip.Prefix
	mac     net.HardwareAddr
}

func parseAttachment(a *api.NetworkAttachment) (attachment, error) {
	p, err := netip.ParsePrefix(a.GetAddr())
	if err != nil {
		return attachment{}, fmt.Errorf("address on network %s: %w", a.GetNetworkId(), err)
	}
	if !p.Addr().Is4() {
		return attachment{}, fmt.Errorf("address %s on network %s: the overlays are IPv4", p, a.GetNetworkId())
	}
	at := attachment{network: a.GetNetworkId(), addr: p.Addr(), prefix: p}
	if a.GetMac() == "" {
		at.mac = ipam.MACFromIP(p.Addr())
	} else if at.mac, err = net.ParseMAC(a.GetMac()); err != nil || len(at.mac) != 6 {
		return attachment{}, fmt.Errorf("MAC %q on network %s: not an Ethernet address", a.GetMac(), a.GetNetworkId())
	}
	return at, nil
}

// endpoint is a parsed NetworkEndpoint.
type endpoint struct {
	api   *api.NetworkEndpoint
	addrs []attachment
}

func (e *endpoint) on(network string) (attachment, bool) {
	for _, a := range e.addrs {
		if a.network == network {
			return a, true
		}
	}
	return attachment{}, false
}

// compute derives the desired kernel state of node self from v. It is pure:
// the same view always gives the same (sorted) result.
//
// vipMasquerade says how VIP frontends send replies back: false when the
// node's bridges hand bridged traffic to conntrack (br_netfilter), so that a
// backend's reply, which goes straight to the client task over the overlay,
// is un-DNATed on the way; true where they cannot, which keeps VIPs working
// for backends on this node only (the reply to the gateway, which every
// node has, would not come back from another one).
func compute(v *view, self string, vipMasquerade bool) *desired {
	d := &desired{}
	problem := func(format string, args ...any) { d.problems = append(d.problems, fmt.Errorf(format, args...)) }

	// Networks.
	nets := map[string]*network{}
	vnis := map[uint32]string{}
	var ingress *network
	for _, id := range slices.Sorted(maps.Keys(v.networks)) {
		n := v.networks[id]
		subnet, err := netip.ParsePrefix(n.GetSubnet())
		if err != nil {
			problem("network %s: subnet: %w", id, err)
			continue
		}
		gw, err := netip.ParseAddr(n.GetGateway())
		if err != nil {
			problem("network %s: gateway: %w", id, err)
			continue
		}
		switch {
		case !subnet.Addr().Is4():
			problem("network %s: subnet %s: the overlays are IPv4", id, subnet)
			continue
		case !subnet.Contains(gw):
			problem("network %s: gateway %s is not in subnet %s", id, gw, subnet)
			continue
		case n.GetVni() < 1 || n.GetVni() > 1<<24-1:
			problem("network %s: VNI %d out of range 1-%d", id, n.GetVni(), 1<<24-1)
			continue
		case vnis[n.GetVni()] != "":
			problem("network %s: VNI %d is network %s's too", id, n.GetVni(), vnis[n.GetVni()])
			continue
		}
		vnis[n.GetVni()] = id
		nw := &network{api: n, subnet: subnet.Masked(), gateway: gw}
		nets[id] = nw
		if n.GetIngress() && ingress == nil {
			ingress = nw
		}
	}

	// Peers: VTEPs, WireGuard keys, and ingress addresses.
	vteps := map[string]netip.Addr{}
	wgKeys := map[string]wgtypes.Key{}
	ingressAddrs := map[string]attachment{}
	for _, id := range slices.Sorted(maps.Keys(v.peers)) {
		p := v.peers[id]
		vtep, err := netip.ParseAddr(p.GetDataAddr())
		if err != nil {
			problem("peer %s: data address: %w", id, err)
			continue
		}
		if !vtep.Is4() {
			problem("peer %s: data address %s: VXLAN runs over IPv4 here", id, vtep)
			continue
		}
		vteps[id] = vtep
		if k := p.GetWireguardKey(); len(k) > 0 {
			if key, err := wgtypes.NewKey(k); err != nil || key == (wgtypes.Key{}) {
				problem("peer %s: WireGuard key of %d bytes: not a key", id, len(k))
			} else {
				wgKeys[id] = key
			}
		}
		if p.GetIngress() != nil && p.GetIngress().GetAddr() != "" {
			a, err := parseAttachment(p.GetIngress())
			if err != nil {
				problem("peer %s: ingress %w", id, err)
				continue
			}
			ingressAddrs[id] = a
		}
	}

	// Endpoints, by task id.
	eps := map[string]*endpoint{}
	for _, id := range slices.Sorted(maps.Keys(v.endpoints)) {
		e := v.endpoints[id]
		ep := &endpoint{api: e}
		for _, a := range e.GetNetworks() {
			at, err := parseAttachment(a)
			if err != nil {
				problem("endpoint %s: %w", id, err)
				continue
			}
			ep.addrs = append(ep.addrs, at)
		}
		eps[id] = ep
	}
	taskIDs := slices.Sorted(maps.Keys(eps))

	// inSubnet reports whether an address may go into the network's overlay
	// state: one the overlay would refuse fails the whole network there.
	inSubnet := func(a attachment, nw *network, what string) bool {
		if !nw.subnet.Contains(a.addr) || a.addr == nw.gateway {
			problem("network %s: %s %s is not a host address of %s other than the gateway", nw.api.GetId(), what, a.addr, nw.subnet)
			return false
		}
		return true
	}

	// Overlays. An encrypted network's VTEPs are the tunnel addresses of
	// the nodes with a WireGuard key; a node without one is not on it
	// (the scheduler puts none of its tasks there).
	for _, id := range slices.Sorted(maps.Keys(nets)) {
		nw := nets[id]
		encrypted := nw.api.GetSpec().GetEncrypted() && nw != ingress
		ns := overlay.NetworkState{Network: overlay.Network{
			ID: id, VNI: nw.api.GetVni(), Subnet: nw.subnet, Gateway: nw.gateway, Encrypted: encrypted,
		}}
		vtepOf := func(node string) (netip.Addr, bool) {
			if !encrypted {
				vtep, ok := vteps[node]
				return vtep, ok
			}
			if _, ok := wgKeys[node]; !ok {
				return netip.Addr{}, false
			}
			_, ok := vteps[node] // the tunnel's endpoint
			return overlay.TunnelAddr(node), ok
		}
		for _, node := range slices.Sorted(maps.Keys(vteps)) {
			if vtep, ok := vtepOf(node); ok && node != self {
				ns.Peers = append(ns.Peers, overlay.Peer{VTEP: vtep})
			}
		}
		ns.Peers = slices.CompactFunc(slices.SortedFunc(slices.Values(ns.Peers), func(a, b overlay.Peer) int {
			return a.VTEP.Compare(b.VTEP)
		}), func(a, b overlay.Peer) bool { return a.VTEP == b.VTEP })
		for _, tid := range taskIDs {
			ep := eps[tid]
			node := ep.api.GetNodeId()
			vtep, ok := vtepOf(node)
			if node == self || !ok {
				if _, on := ep.on(id); on && encrypted && node != self && !hasKey(wgKeys, node) {
					problem("network %s: endpoint %s: its node %s has no WireGuard key, so it cannot be on this encrypted network", id, tid, node)
				}
				continue
			}
			if a, ok := ep.on(id); ok && inSubnet(a, nw, "endpoint "+tid) {
				ns.Endpoints = append(ns.Endpoints, overlay.Endpoint{Addr: a.addr, MAC: a.mac, VTEP: vtep})
			}
		}
		if nw == ingress {
			if a, ok := ingressAddrs[self]; ok && inSubnet(a, nw, "this node's ingress address") {
				ns.NodeAddr = a.addr
			}
			// Other nodes' own addresses: mesh traffic they masquerade
			// comes from these, and the replies must find them.
			for _, node := range slices.Sorted(maps.Keys(ingressAddrs)) {
				vtep, ok := vteps[node]
				if a := ingressAddrs[node]; node != self && ok && inSubnet(a, nw, "node "+node+"'s ingress address") {
					ns.Endpoints = append(ns.Endpoints, overlay.Endpoint{Addr: a.addr, MAC: a.mac, VTEP: vtep})
				}
			}
		}
		slices.SortFunc(ns.Endpoints, func(a, b overlay.Endpoint) int { return a.Addr.Compare(b.Addr) })
		d.overlays = append(d.overlays, ns)
		d.tunnel.Active = d.tunnel.Active || encrypted
		d.subnets = append(d.subnets, nw.subnet)
		d.dnsAddrs = append(d.dnsAddrs, netip.PrefixFrom(nw.gateway, nw.subnet.Bits()))
		d.guard.gateways = append(d.guard.gateways, gatewayGuard{addr: nw.gateway, bridge: overlay.BridgeName(nw.api.GetVni())})
	}
	if d.tunnel.Active {
		for _, node := range slices.Sorted(maps.Keys(wgKeys)) {
			if vtep, ok := vteps[node]; ok && node != self {
				d.tunnel.Peers = append(d.tunnel.Peers, overlay.TunnelPeer{Key: wgKeys[node], Endpoint: vtep, Addr: overlay.TunnelAddr(node)})
			}
		}
	}
	// The peers are every network's (see above), so the guard's set is
	// exactly the VTEPs the overlays send to.
	d.guard.active = len(d.overlays) > 0
	if d.guard.active {
		for node, vtep := range vteps {
			if node != self {
				d.guard.peers = append(d.guard.peers, vtep)
			}
		}
		slices.SortFunc(d.guard.peers, netip.Addr.Compare)
		d.guard.peers = slices.Compact(d.guard.peers)
	}
	slices.SortFunc(d.guard.gateways, func(a, b gatewayGuard) int {
		return cmp.Or(a.addr.Compare(b.addr), strings.Compare(a.bridge, b.bridge))
	})
	slices.SortFunc(d.subnets, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
	d.subnets = slices.Compact(d.subnets)
	slices.SortFunc(d.dnsAddrs, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
	d.dnsAddrs = slices.Compact(d.dnsAddrs)

	// Serving endpoints per service, in task id order.
	serving := map[string][]*endpoint{}
	for _, tid := range taskIDs {
		ep := eps[tid]
		if ep.api.GetServing() {
			serving[ep.api.GetServiceId()] = append(serving[ep.api.GetServiceId()], ep)
		}
	}

	// Load balancer.
	keys := map[string]string{} // lb.Key → frontend name, to refuse clashes before lb.Validate would refuse all
	add := func(f lb.Frontend) {
		k := lb.Key(f)
		if other, dup := keys[k]; dup {
			problem("frontend %s: %s is already balanced by %s; skipped", f.Name, k, other)
			return
		}
		keys[k] = f.Name
		sortBackends(f.Backends)
		f.Backends = slices.Compact(f.Backends)
		d.lb.Frontends = append(d.lb.Frontends, f)
	}
	for _, sid := range slices.Sorted(maps.Keys(v.services)) {
		s := v.services[sid]
		for _, p := range s.GetEndpoint().GetPorts() {
			proto := lb.Protocol(strings.ToLower(p.GetProtocol()))
			if proto == "" {
				proto = lb.TCP
			}
			if _, err := proto.Number(); err != nil {
				problem("service %s: port %d: %w", sid, p.GetPublished(), err)
				continue
			}
			if p.GetPublished() == 0 || p.GetPublished() > 65535 || p.GetTarget() == 0 || p.GetTarget() > 65535 {
				problem("service %s: port %d→%d/%s: not a usable port pair", sid, p.GetPublished(), p.GetTarget(), proto)
				continue
			}
			published, target := uint16(p.GetPublished()), uint16(p.GetTarget())
			name := fmt.Sprintf("pub:%s:%d/%s", sid, published, proto)
			f := lb.Frontend{Name: name, Protocol: proto, Port: published, Backends: []lb.Backend{}}
			mode := cmp.Or(strings.ToLower(p.GetMode()), modeIngress)
			traffic := cmp.Or(strings.ToLower(p.GetTraffic()), trafficCluster)
			switch {
			case mode == modeIngress && traffic == trafficCluster:
				f.Masquerade = true
				for _, ep := range serving[sid] {
					if ingress == nil {
						break
					}
					if a, ok := ep.on(ingress.api.GetId()); ok {
						f.Backends = append(f.Backends, lb.Backend{Addr: a.addr, Port: target})
					}
				}
			case mode == modeIngress && traffic == trafficLocal:
				for _, ep := range serving[sid] {
					if ingress == nil || ep.api.GetNodeId() != self {
						continue
					}
					if a, ok := ep.on(ingress.api.GetId()); ok {
						f.Backends = append(f.Backends, lb.Backend{Addr: a.addr, Port: target})
					}
				}
			case mode == modeHost:
				for _, ep := range serving[sid] {
					if ep.api.GetNodeId() != self {
						continue
					}
					// A host-mode task is on ingress only if the service
					// also publishes in ingress mode; otherwise its first
					// network's bridge reaches it as well.
					a, ok := attachment{}, false
					if ingress != nil {
						a, ok = ep.on(ingress.api.GetId())
					}
					if !ok && len(ep.addrs) > 0 {
						a, ok = ep.addrs[0], true
					}
					if ok {
						f.Backends = append(f.Backends, lb.Backend{Addr: a.addr, Port: target})
					}
				}
				if len(f.Backends) == 0 {
					continue // only nodes running a task publish a host port
				}
			default:
				problem("service %s: port %d/%s: unknown mode %q or traffic policy %q", sid, published, proto, p.GetMode(), p.GetTraffic())
				continue
			}
			add(f)
		}
		if strings.EqualFold(s.GetMode(), endpointDNSRR) {
			continue
		}
		for _, vip := range s.GetEndpoint().GetVips() {
			nw, ok := nets[vip.GetNetworkId()]
			if !ok {
				continue
			}
			addr, err := parseVIP(vip.GetAddr())
			if err != nil {
				problem("service %s: VIP on network %s: %w", sid, vip.GetNetworkId(), err)
				continue
			}
			if !addr.Is4() || addr.IsUnspecified() {
				problem("service %s: VIP %s on network %s: not a usable IPv4 address", sid, addr, vip.GetNetworkId())
				continue
			}
			var backends []lb.Backend
			for _, ep := range serving[sid] {
				if a, ok := ep.on(nw.api.GetId()); ok {
					backends = append(backends, lb.Backend{Addr: a.addr})
				}
			}
			// Port-agnostic, like Swarm's fwmark VIPs: a service with no
			// published port is reachable on whatever port it listens on.
			for _, proto := range []lb.Protocol{lb.TCP, lb.UDP} {
				add(lb.Frontend{
					Name:     fmt.Sprintf("vip:%s:%s/%s", sid, nw.api.GetId(), proto),
					Protocol: proto, VIP: addr,
					Backends:   append([]lb.Backend{}, backends...),
					Masquerade: vipMasquerade,
				})
			}
		}
	}
	for _, f := range d.lb.Frontends {
		if f.VIP.IsValid() {
			d.vips = append(d.vips, f.VIP)
		}
	}
	slices.SortFunc(d.vips, netip.Addr.Compare)
	d.vips = slices.Compact(d.vips)
	d.dns = newDNSIndex(v, nets, eps, ingress, serving)
	return d
}

func hasKey(keys map[string]wgtypes.Key, node string) bool {
	_, ok := keys[node]
	return ok
}

// parseVIP takes a VIP as CIDR (the allocator's form) or a bare address.
func parseVIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

func sortBackends(bs []lb.Backend) {
	slices.SortFunc(bs, func(a, b lb.Backend) int { return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port)) })
}
