// Package dns is the embedded per-node resolver tasks use for service
// discovery: it answers A and AAAA queries for the names a Lookup knows
// (service names, tasks.<service>, task names) and forwards everything else
// to the node's upstream nameservers. Each listener serves one gateway's
// subnet and refuses (REFUSED, nothing looked up or forwarded) any other
// source; UDP answers are never longer than 1232 bytes, whatever EDNS size
// the client claims.
//
// It owns the resolver's listening sockets, which it can create inside a
// task network namespace, and nothing else: which names exist and which
// addresses they have is the caller's business, asked per query through
// Lookup.
package dns
