// Package containerd runs a worker's tasks as containerd containers. It
// implements exec.Executor and exec.Controller with the containerd v2
// client, one containerd namespace per node, so that several nodes can
// share one containerd on a test machine.
//
// It owns the containers, tasks (processes) and rootfs snapshots it makes,
// all named by the shoal task ID and found again by the exec.Label*
// labels, so that a restarted shoald adopts what an earlier run started.
// A task's resource limits become its container's cgroup limits (CPU
// quota, memory, pids; spec.go), and a process the OOM killer ended is
// reported as such (exec.ErrOOMKilled, from its memory cgroup; cgroup.go).
// It keeps no state of its own: every call asks containerd. It also loads
// the image tarballs the managers distribute (exec.ImageLoader), marking
// each image with the digest of the tarball it came from, and runs health
// checks (exec.Prober): the task's check merged over its image's
// HEALTHCHECK, each run as an extra process of the container's task that
// it deletes when the check ends.
//
// It does not touch networking beyond giving each container a new network
// namespace (loopback only); attaching that namespace to networks is the
// network package's business.
package containerd
