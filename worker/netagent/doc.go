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
// It owns the node's overlay devices, its load balancer table, the
// masquerade rules of overlay subnets and the DNS listeners; it never talks
// to the managers or to containerd, and does not touch containers beyond
// their network interfaces.
package netagent
