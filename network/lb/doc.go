// Package lb defines the routing mesh's load balancer seam: the desired state
// a node's data plane must program (published ports and service VIPs, each
// with its backends) and the Balancer interface its backends implement.
//
// A Balancer is told the whole desired state each time and works out the
// difference itself, the way kube-proxy's nftables mode does, so callers never
// track what is programmed. Backends live in subpackages: nft (nftables, used
// everywhere) and ipvs (where the kernel has IPVS). lbtest holds the
// conformance suite both pass.
//
// A VIP frontend with port 0 balances every port of its VIP and protocol,
// keeping the destination port (Swarm's fwmark VIPs behave so): services
// without published ports answer on whatever port they listen on.
//
// This package owns no kernel state and talks to nothing: it is types and
// validation only.
package lb
