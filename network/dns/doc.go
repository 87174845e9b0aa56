// Package dns is the embedded per-node resolver tasks use for service
// discovery: it answers A and AAAA queries for the names a Lookup knows
// (service names, tasks.<service>, task names) and forwards everything else
// to the node's upstream nameservers.
//
// It owns the resolver's listening sockets, which it can create inside a
// task network namespace, and nothing else: which names exist and which
// addresses they have is the caller's business, asked per query through
// Lookup.
package dns
