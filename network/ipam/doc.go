// Package ipam hands out the numbers an overlay network needs: addresses in
// a subnet (with the gateway, network and broadcast addresses kept back),
// subnets carved from a default pool without overlapping the networks that
// already exist, and VXLAN network identifiers.
//
// It is pure bookkeeping for the manager's allocator: no kernel, no store,
// no I/O. The allocator restores its state from the store after a restart
// with the Restore methods, so nothing here is persisted.
package ipam
