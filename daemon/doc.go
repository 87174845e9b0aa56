// Package daemon assembles shoald: it owns a node's data dir (what is
// kept there and its lock), starts the manager (when the node is one) and
// the worker agent with its containerd executor, and serves the gRPC APIs
// on the node's sockets. Cluster bootstrap is manager/ca's (Found) and
// manager's (Init), the join handshake is the worker's (Join); the daemon
// calls them, stores what they return and wires the node's one dial
// configuration (mutual TLS to the managers) into both roles. It holds no
// cluster logic of its own beyond wiring and start-up checks.
package daemon
