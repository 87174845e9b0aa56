// Package dispatcher serves the Dispatcher gRPC API on the leader: worker
// sessions and heartbeats, node-down detection, the per-node assignment
// stream (a full set, then versioned deltas) and task status reports. It
// writes node status and task status to raft; it does not schedule.
package dispatcher
