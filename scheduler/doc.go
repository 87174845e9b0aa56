// Package scheduler decides which node runs each pending task.
//
// It owns placement only: the filters that say whether a node can take a
// task (ready, availability, WireGuard for a task on an encrypted network,
// placement constraints, platform, and the limits that depend on what a
// node already holds: CPU and memory reservations against the node's capacity, a service's cap per node),
// the spread that picks among the nodes that pass (per service, then per
// node; with spread preferences, over a tree of label values first), and
// the "why is my task pending" explanation that counts, per reason, the
// nodes that were turned down. A global service's tasks come with their
// node set; for them it only checks that node. It also owns the parser
// for placement constraints, which the control API uses to validate
// service specs and the orchestrator to find a global service's nodes.
//
// Everything here is a pure function of a snapshot of nodes and tasks: no
// store, no raft, no clock, no goroutines. The manager's scheduling loop
// feeds a Scheduler the nodes and tasks it watches, asks it to place the
// pending tasks, and commits the decisions itself. Keeping I/O out is what
// lets the placement path be tested with plain values and benchmarked alone.
package scheduler
