// Package lab runs a local multi-node shoal cluster on one Linux machine,
// for trying shoal out and for end-to-end tests: a bridge (shoallab0) is
// the underlay, every node is a network namespace on it with its own
// address, data dir, unix socket, containerd namespace and shoald process,
// and all nodes share the host's containerd.
//
// It owns everything named after the lab: the bridge, the netns
// shoal-lab-*, the veths sl-*, the containerd namespaces shoal-lab-*,
// /var/lib/shoal-lab and /run/shoal-lab (state file and the context file
// that points plain shoalctl at the lab). Down finds all of it by those
// names, not only through the state file, so it cleans up after a crash
// or a half-done Up. It must not touch anything outside those names.
//
// The lab drives shoald only through its command line and the Control
// API on the unix sockets; it knows nothing of shoald's insides.
package lab
