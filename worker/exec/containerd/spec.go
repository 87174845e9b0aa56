package containerd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/oci"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// Environment variables every task's process gets, so a program can tell
// which task, service and node it is.
const (
	EnvTaskID      = "SHOAL_TASK_ID"
	EnvTaskName    = "SHOAL_TASK_NAME"
	EnvServiceName = "SHOAL_SERVICE_NAME"
	EnvServiceID   = "SHOAL_SERVICE_ID"
	EnvTaskSlot    = "SHOAL_TASK_SLOT"
	EnvNodeID      = "SHOAL_NODE_ID"
)

// defaultStopGracePeriod is Docker's default: long enough for a server to
// finish its requests, short enough that an update does not stall.
const defaultStopGracePeriod = 10 * time.Second

// maxHostnameLen is the kernel's limit on a UTS hostname (HOST_NAME_MAX).
const maxHostnameLen = 64

// errNoCommand is returned when neither the task nor the image says what
// to run.
var errNoCommand = errors.New("no command: the image has no entrypoint or cmd and the task sets none")

// processArgs resolves the process's argv the way Docker does: command
// replaces the image's entrypoint (and drops its cmd), args replace the
// image's cmd.
func processArgs(img ocispec.ImageConfig, command, args []string) ([]string, error) {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(append(argv, command...), args...)
	case len(args) > 0:
		argv = append(append(argv, img.Entrypoint...), args...)
	default:
		argv = append(append(argv, img.Entrypoint...), img.Cmd...)
	}
	if len(argv) == 0 {
		return nil, errNoCommand
	}
	return argv, nil
}

// taskEnv is the environment the task adds to the image's: the spec's
// entries, then the SHOAL_* variables, which win over the spec's.
func taskEnv(t *api.Task, nodeID string) []string {
	env := append([]string(nil), t.GetSpec().GetContainer().GetEnv()...)
	return append(env,
		EnvTaskID+"="+t.GetId(),
		EnvTaskName+"="+api.TaskName(t),
		EnvServiceName+"="+t.GetServiceName(),
		EnvServiceID+"="+t.GetServiceId(),
		EnvTaskSlot+"="+strconv.FormatUint(t.GetSlot(), 10),
		EnvNodeID+"="+nodeID,
	)
}

// validateEnv rejects entries that are not KEY=VALUE: the runtime would
// pass them on and the process would see a malformed environment.
func validateEnv(env []string) error {
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("env entry %q is not KEY=VALUE", kv)
		}
	}
	return nil
}

// containerLabels are the spec's labels plus the shoal labels, which the
// spec cannot override: a restarted worker finds its containers by them.
func containerLabels(t *api.Task, nodeID string) map[string]string {
	labels := make(map[string]string, len(t.GetSpec().GetContainer().GetLabels())+4)
	for k, v := range t.GetSpec().GetContainer().GetLabels() {
		labels[k] = v
	}
	labels[exec.LabelTask] = t.GetId()
	labels[exec.LabelService] = t.GetServiceId()
	labels[exec.LabelSlot] = strconv.FormatUint(t.GetSlot(), 10)
	labels[exec.LabelNode] = nodeID
	return labels
}

// hostname is the spec's hostname, else the task's short name
// <service>.<slot> (stable across restarts of a slot; a global task's
// place is its node, shortened), else the short task ID when the task has
// no service name.
func hostname(t *api.Task) string {
	if h := t.GetSpec().GetContainer().GetHostname(); h != "" {
		return h
	}
	h := api.ShortID(t.GetId())
	if t.GetServiceName() != "" {
		h = t.GetServiceName() + "." + api.ShortID(api.TaskPlace(t))
	}
	if len(h) > maxHostnameLen {
		// A dot left at the end would make the name look like an FQDN.
		h = strings.TrimRight(h[:maxHostnameLen], ".")
	}
	return h
}

// stopGracePeriod is the spec's stop grace period, or the default when
// unset or not positive.
func stopGracePeriod(t *api.Task) time.Duration {
	d := t.GetSpec().GetContainer().GetStopGracePeriod()
	if d == nil || d.AsDuration() <= 0 {
		return defaultStopGracePeriod
	}
	return d.AsDuration()
}

// containerFromLabels turns a container's labels into what the agent needs
// to recognise it.
func containerFromLabels(id string, labels map[string]string, running bool) exec.Container {
	slot, _ := strconv.ParseUint(labels[exec.LabelSlot], 10, 64)
	return exec.Container{
		ID:        id,
		TaskID:    labels[exec.LabelTask],
		ServiceID: labels[exec.LabelService],
		Slot:      slot,
		Running:   running,
	}
}

// cfsPeriod is the CFS period a CPU limit is a quota of, in µs: the
// kernel's default of 100 ms, as Docker's --cpus uses.
const cfsPeriod = 100_000

// resourceOpts sets the container's cgroup limits from the task's spec:
// CPU as a CFS quota (0.5 CPU is 50 ms of every 100 ms), memory as a hard
// limit, and the number of processes. With noSwap the memory limit covers
// swap too, so a task that goes past it is OOM-killed rather than
// swapped out (Docker lets it swap as much again; a limit that holds is
// what users of a limit expect).
func resourceOpts(t *api.Task, noSwap bool) []oci.SpecOpts {
	r := t.GetSpec().GetResources()
	var opts []oci.SpecOpts
	if cpu := r.GetLimits().GetNanoCpus(); cpu > 0 {
		opts = append(opts, oci.WithCPUCFS(max(cpu*cfsPeriod/api.NanoCPU, 1), cfsPeriod))
	}
	if mem := r.GetLimits().GetMemoryBytes(); mem > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(mem)))
		if noSwap {
			opts = append(opts, oci.WithMemorySwap(mem))
		}
	}
	if pids := r.GetPidsLimit(); pids > 0 {
		opts = append(opts, oci.WithPidsLimit(pids))
	}
	return opts
}
