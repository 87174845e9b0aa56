// Package allocator decides the network resources a cluster object needs
// before it can run: a subnet, gateway and VNI per overlay network, a VIP per
// service per network (unless the service uses DNS round robin), published
// ports for the routing mesh (explicit, or picked from 30000-32767), an
// address and MAC per task per network, and an ingress address per node for
// its ingress bridge.
//
// It owns allocation decisions only. It keeps no state of its own that
// outlives the process: after a restart or a change of leader the manager
// rebuilds it from the store with Restore. Writing allocations through raft,
// watching the store and moving tasks from NEW to PENDING belong to the
// manager's allocator controller, which comes later. No I/O, no kernel, no
// store here, so every rule can be tested and benchmarked alone.
//
// Every Allocate call is all-or-nothing: when it fails, the allocator holds
// exactly what it held before.
package allocator
