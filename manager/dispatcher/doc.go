// Package dispatcher serves the Dispatcher gRPC API on the leader: worker
// sessions and heartbeats, node-down detection, the per-node assignment
// stream (a full set, then versioned deltas), task status reports and the
// list of images every node must have. It writes node status and task
// status to raft; it does not schedule. One call is served by every
// manager, leader or not: FetchImage, which streams an image tarball the
// manager holds.
package dispatcher
