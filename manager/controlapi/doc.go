// Package controlapi serves the Control gRPC API that shoalctl speaks. It
// validates at the edge (InvalidArgument naming the field), reads from the
// store and turns writes into raft proposals. It never touches containers
// or the network.
package controlapi
