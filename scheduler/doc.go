// Package scheduler decides which node runs each pending task.
//
// It owns placement only: the filters that say whether a node can take a
// task (ready, availability, placement constraints, platform), the spread
// scoring that picks among the nodes that pass, and the "why is my task
// pending" explanation that counts, per reason, the nodes that were turned
// down. It also owns the parser for placement constraints, which the control
// API uses to validate service specs.
//
// Everything here is a pure function of a snapshot of nodes and tasks: no
// store, no raft, no clock, no goroutines. The manager's scheduling loop
// feeds a Scheduler the nodes and tasks it watches, asks it to place the
// pending tasks, and commits the decisions itself. Keeping I/O out is what
// lets the placement path be tested with plain values and benchmarked alone.
package scheduler
