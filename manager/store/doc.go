// Package store is the managers' in-memory state: nodes, services, tasks and
// the cluster object in go-memdb tables, changed only by raft commands
// (Apply), with snapshots for raft and a change feed for the controllers.
//
// Objects handed out by the store are shared and must not be modified:
// clone them (proto.Clone) before building an update. The store does not
// talk to raft; package manager/state does, and calls Apply in log order.
package store
