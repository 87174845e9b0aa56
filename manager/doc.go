// Package manager is the manager role: it owns the raft member (package
// state) and, while this manager leads, runs the controllers that move
// tasks along, one type and one file each over one shared watch loop
// (watch.go): the orchestrator (service spec → tasks, restarts), the
// allocator (NEW → PENDING), the scheduler (PENDING → ASSIGNED) and
// demotions (roles); beside them the dispatcher (assignments to workers,
// their status back) and the managers' status. It serves the Control and
// Dispatcher gRPC APIs, sending allocating control calls to the leader
// while it follows (forward.go).
//
// Network allocation has one owner per manager, stored.Allocator (package
// manager/allocator/stored), made in open and shared by the control API,
// the allocator controller and Init, which creates the cluster with its
// ingress network (Ingress). The decisions themselves are the pure
// packages': allocator, orchestrator, scheduler. Every manager, leader or
// not, keeps a copy of every loaded image tarball (package tarballs) to
// give to nodes. It never runs containers.
package manager
