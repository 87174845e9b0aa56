// Package testcluster runs real shoald processes for end-to-end tests and
// benchmarks: it builds the binaries once, gives every node its own data
// dir, socket and containerd namespace, loads the echo image there, and
// removes everything it made (processes, containers, snapshots, images,
// namespaces, files) when the test ends, even when it fails.
package testcluster
