// Package lbtest is the conformance suite every lb.Balancer backend passes
// (Run), and the throwaway network namespaces kernel tests send real traffic
// through (Topology: a router, backends running echo servers, a client).
//
// It is imported by tests only. Everything it creates lives in namespaces it
// made and is removed at test cleanup; traffic never leaves them.
package lbtest
