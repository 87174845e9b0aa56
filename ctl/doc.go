// Package ctl is shoalctl: the cobra commands a user types (service, node,
// cluster join-token, image, lab; the flags of a service's mode, placement
// and resources are in service_flags_placement.go, ready for `service
// update`), the connection to shoald's Control API
// (dial.go: the local unix socket, or remote managers over mutual TLS with
// the admin credentials `shoald init` writes, failing over between them;
// lastmanager.go remembers which answered), and everything the user
// reads back: tables, JSON and Go-template output (format.go), and the live
// convergence display of `service create`, `service scale`, `service
// update` and `service rollback` (progress.go, wait.go). The flags that set
// a service's spec are one set, shared by create and update
// (service_flags.go).
//
// It owns no cluster state. Every command is a thin client of
// api.ControlClient: input is checked here before any RPC so that mistakes
// are reported without a server, but the managers remain the judges of
// what is valid. Nothing in this package may import manager, worker or
// scheduler code.
package ctl
