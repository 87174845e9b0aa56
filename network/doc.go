// Package network will hold the data plane each worker builds from the
// state the managers stream it: IPAM helpers, the overlay (a bridge and a
// VXLAN device per network, static FDB and neighbour entries), task
// attachment (a network namespace and a veth per task), the load balancer
// backends (nftables, ipvs) behind one interface, and service DNS. Until
// then tasks get a network namespace of their own with loopback only.
//
// It owns kernel networking state and nothing else: it never talks to the
// managers or to containerd.
package network
