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
// NftMarker is the Marker for real kernels: one nftables table (by default
// shoal-ipvs-mark) that marks each frontend's packets in prerouting and
// output and masquerades the frontends that ask for it. NewKernel puts the
// two together, and refuses where Available says there is no IPVS.
//
// It owns the IPVS services whose marks fall in its range and the marker's
// table, and nothing else.
package ipvs
