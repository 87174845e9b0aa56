// Package daemon assembles shoald: it owns a node's data dir, starts the
// manager (when the node is one) and the worker agent with its containerd
// executor, and serves the gRPC APIs on the node's sockets. It holds no
// logic of its own beyond wiring and start-up checks.
package daemon
