// Package manager is the manager role: it owns the raft member (package
// state) and, while this manager leads, runs the controllers that move
// tasks along: the orchestrator (service spec → tasks, restarts), the
// allocator (NEW → PENDING), the scheduler (PENDING → ASSIGNED) and the
// dispatcher (assignments to workers, their status back). It serves the
// Control and Dispatcher gRPC APIs. Every manager, leader or not, keeps a
// copy of every loaded image tarball (package tarballs) to give to nodes.
// It never runs containers.
package manager
