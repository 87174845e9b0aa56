// Package daemon assembles shoald: it owns a node's data dir (what is
// kept there and its lock), starts the manager (when the node is one) and
// the worker agent with its containerd executor, and serves the gRPC APIs
// on the node's sockets. Cluster bootstrap is manager/ca's (Found) and
// manager's (Init), the join handshake is the worker's (Join); the daemon
// calls them, stores what they return and wires the node's one dial
// configuration (mutual TLS to the managers) into both roles. `shoald
// leave` runs the same way in reverse: the dispatcher removes the node
// (LeaveCluster), image.PurgeNamespace its containers, netagent.Teardown
// its kernel state; the daemon orders the steps, stops its own process
// and removes its data dir. It holds no cluster logic of its own beyond
// wiring, start-up checks and those refusals that need the node's own
// view (a manager must be demoted first).
package daemon
