// Package overlay programs one node's side of the VXLAN overlay networks:
// per network a bridge (shb-<vni>) and a VXLAN device (shx-<vni>) attached
// to it, with static FDB entries (remote task MAC to its node's VTEP, and the
// all-zero MAC to every peer for broadcast) and permanent neighbour entries
// (remote task IP to MAC) so ARP is answered locally and nothing is learned
// by flooding.
//
// A Manager is told the whole desired state and changes only what differs
// from the kernel, so it is idempotent and needs no memory of its own: after
// a restart it finds its devices by their name prefixes. It owns those
// devices and nothing else; task veths belong to package attach.
package overlay
