// Package network holds the data plane each worker builds from the state
// the managers stream it (worker/netagent drives it): IPAM helpers, the
// overlay (a bridge and a VXLAN device per network, static FDB and
// neighbour entries), task attachment (a veth per task and network), the
// load balancer backends (nftables, ipvs) behind one interface, and
// service DNS. This package itself has the helpers they share.
//
// It owns kernel networking state and nothing else: it never talks to the
// managers or to containerd.
package network
