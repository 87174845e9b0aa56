// Package controlapi serves the Control gRPC API that shoalctl speaks. It
// validates at the edge (InvalidArgument naming the field), reads from the
// store and turns writes into raft proposals. Writes that allocate
// (network create and remove, service create and update with their VIPs
// and ports) go through the manager's network allocator
// (stored.Allocator), which decides and proposes them under its lock; the
// server maps its errors to gRPC codes. It never touches containers or
// the network.
package controlapi
