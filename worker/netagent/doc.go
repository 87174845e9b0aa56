// Package netagent is a worker node's network agent: it keeps the node's
// network view as the managers stream it (networks, peers, endpoints,
// services) and turns it into kernel state with the network libraries:
// overlays (network/overlay), egress masquerade and task interfaces
// (network/attach), the routing mesh and service VIPs (network/lb) and the
// embedded DNS resolver (network/dns).
//
// The view → desired state computation is pure (desired.go); the Agent
// applies only the parts that changed, the load balancer first, so that a
// backend has left it by the time Apply returns.
//
// How traffic flows:
//   - A published port is DNATed on any node to the service's tasks'
//     ingress addresses and masqueraded to the node's own ingress address,
//     so the reply returns over the ingress overlay (traffic=local and host
//     mode: this node's tasks only, client address kept).
//   - A VIP lies in its network's subnet, so tasks ARP for it: the node
//     holds every VIP on its loopback (labelled lo:shoalvip) to answer, then
//     DNATs to the service's tasks on that network, on whatever port was
//     asked. The client's address is kept: the backend's reply, bridged over
//     the overlay straight to the client task, is un-DNATed by conntrack on
//     the client's node (br_netfilter, bridge-nf-call-iptables=1). Without
//     br_netfilter, and under IPVS, VIP traffic is masqueraded instead,
//     which reaches tasks on this node only.
//   - DNS: the resolver listens on every network's gateway; a task's
//     resolv.conf names its first network's. It answers only that
//     network's subnet.
//   - The guard table (shoal-guard, guard.go) drops VXLAN from anyone but
//     the current peers and resolver queries that do not come in on their
//     network's bridge, replaced whole with each change of the peer set.
//
// It owns the node's overlay devices, its load balancer table, the guard
// table, the masquerade rules of overlay subnets, the VIP addresses and
// the DNS listeners; it never talks to the managers or to containerd, and touches
// containers only through their network interfaces.
package netagent
