// Package bench measures shoal on this machine: convergence, replacement
// and removal times against real containerd, API write latency, memory,
// and (in manager/ and scheduler/) in-process scheduling throughput. Each
// figure comes with a baseline measured in the same run (raw containerd
// doing the same container work) and the ratio to it, since absolute
// times on a shared machine say little. Run with `make bench`.
package bench
