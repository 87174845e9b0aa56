// Package ipvs is the IPVS load balancer backend, the way Swarm's ingress
// works: each frontend gets a firewall mark (set on its packets by a Marker,
// e.g. nftables), and an IPVS service per mark balances round robin over the
// backends as real servers with masquerade forwarding.
//
// IPVS has no transactions: Apply makes the smallest set of service and
// destination changes, and after any error the next Apply removes every
// service in its mark range and rebuilds them. Use it only where Available
// says the kernel has IPVS: elsewhere moby/ipvs reports success and does
// nothing.
//
// It owns the IPVS services whose marks fall in its range, and nothing else.
package ipvs
