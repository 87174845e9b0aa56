// Package ipvs is the IPVS load balancer backend, the way Swarm's ingress
// works: each frontend gets a firewall mark (set on its packets by a Marker,
// e.g. nftables), and an IPVS service per mark balances round robin over the
// backends as real servers with masquerade forwarding.
//
// IPVS has no transactions: Apply makes the smallest set of service and
// destination changes, and after any error (or at the first Apply) it
// reconciles with what the kernel holds, taking its marks back from the
// marker, so that connections through services that are right go on. A
// backend that leaves a TCP frontend is quiesced (weight 0) and deleted
// once its connections are gone; a UDP backend is deleted at once. Use it
// only where Available says the kernel has IPVS: elsewhere moby/ipvs
// reports success and does nothing.
//
// NftMarker is the Marker for real kernels: one nftables table (by default
// shoal-ipvs-mark) that marks each frontend's packets in prerouting and
// output, masquerades the frontends that ask for it, and clears the marks
// once they are used, before anything (a VXLAN device) can inherit them.
// NewKernel puts the two together, sets the namespace's IPVS sysctls and
// timeouts, and refuses where Available says there is no IPVS.
//
// It owns the IPVS services whose marks fall in its range, the marker's
// table, the namespace's IPVS settings, and the conntrack entries of UDP
// backends it removes, and nothing else.
package ipvs
