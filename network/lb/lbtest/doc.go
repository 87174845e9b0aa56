// Package lbtest is the conformance suite every lb.Balancer backend passes
// (Run for what is programmed, RunTraffic for real TCP and UDP through it),
// the throwaway network namespaces kernel tests send traffic through
// (Topology: a router, backends running echo servers, a client), and what
// the backends' benchmarks share (BenchState).
//
// It is imported by tests only. Everything it creates lives in namespaces it
// made and is removed at test cleanup; traffic never leaves them.
package lbtest
