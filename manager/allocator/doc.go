// Package allocator decides the network resources a cluster object needs
// before it can run: a subnet, gateway and VNI per overlay network, a VIP per
// service per network (unless the service uses DNS round robin), published
// ports for the routing mesh (explicit, or picked from 30000-32767), an
// address and MAC per task per network, and an ingress address per node for
// its ingress bridge. Ports are checked by the API's rules
// (api.NormalizePort), the same ones the CLI parses --publish with.
//
// It owns allocation decisions only, and is pure: no I/O, no kernel, no
// store, no raft, so every rule can be tested and benchmarked alone. It
// keeps no state that outlives the process. Its one user is
// stored.Allocator (package stored below), which owns the lock and, for
// every decision, reads the store, restores an allocator from it, asks it,
// and proposes the answer through raft. The control API, the leader's
// allocator controller and manager.Init go through stored.Allocator; none
// of them builds an allocator itself.
//
// Every Allocate call is all-or-nothing: when it fails, the allocator holds
// exactly what it held before.
package allocator
