package containerd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// withLimits gives a task a memory limit (and CPU and process limits).
func withLimits(t *api.Task, memory int64) *api.Task {
	t.Spec.Resources = &api.ResourceRequirements{
		Limits:    &api.Resources{NanoCpus: api.NanoCPU / 2, MemoryBytes: memory},
		PidsLimit: 64,
	}
	return t
}

// TestMemoryLimitHolds: a task under its memory limit runs, with the
// limits in its container's spec, and its cgroup holds them.
func TestMemoryLimitHolds(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	task := withLimits(f.echoTask("ECHO_ALLOCATE_MB=16"), 64<<20)
	ctl := f.controller(t, f.e, task)
	prepareAndStart(t, ctx, ctl)
	waitOutput(t, ctx, ctl, "echo allocated memory")

	nctx := f.e.nsContext(ctx)
	ctr, err := f.e.client.LoadContainer(nctx, task.GetId())
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ctr.Spec(nctx)
	if err != nil {
		t.Fatal(err)
	}
	r := spec.Linux.Resources
	if r.Memory == nil || r.Memory.Limit == nil || *r.Memory.Limit != 64<<20 {
		t.Errorf("memory limit in the spec: %+v", r.Memory)
	}
	if r.CPU == nil || *r.CPU.Quota != 50_000 || *r.CPU.Period != 100_000 {
		t.Errorf("CPU limit in the spec: %+v", r.CPU)
	}
	if r.Pids == nil || *r.Pids.Limit != 64 {
		t.Errorf("pids limit in the spec: %+v", r.Pids)
	}
	for _, f := range []struct{ v1, v2, want string }{
		{"memory/" + spec.Linux.CgroupsPath + "/memory.limit_in_bytes", spec.Linux.CgroupsPath + "/memory.max", "67108864"},
		{"pids/" + spec.Linux.CgroupsPath + "/pids.max", spec.Linux.CgroupsPath + "/pids.max", "64"},
	} {
		got, err := readCgroupFile(f.v1, f.v2)
		if err != nil {
			t.Errorf("cgroup: %v", err)
			continue
		}
		if got != f.want {
			t.Errorf("cgroup %s = %q, want %q", f.v2, got, f.want)
		}
	}
	select {
	case err := <-waitAsync(t, ctx, ctl):
		t.Fatalf("a task under its limit ended: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestMemoryLimitOOMKilled: a task that allocates past its limit is
// killed by the kernel, and Wait says so.
func TestMemoryLimitOOMKilled(t *testing.T) {
	f := newFixture(t)
	ctx := testContext(t)
	ctl := f.controller(t, f.e, withLimits(f.echoTask("ECHO_ALLOCATE_MB=128"), 32<<20))
	prepareAndStart(t, ctx, ctl)
	err := ctl.Wait(ctx)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || !errors.Is(ee.Cause, exec.ErrOOMKilled) {
		t.Fatalf("wait = %v, want an exit caused by the OOM killer", err)
	}
	if ee.Code != 137 {
		t.Errorf("exit code %d, want 137 (SIGKILL)", ee.Code)
	}
	if got := err.Error(); got != "task: non-zero exit (137): OOMKilled" {
		t.Errorf("error text %q", got)
	}
	// A crash that is not the OOM killer's is not called one.
	crash := f.controller(t, f.e, withLimits(f.echoTask("ECHO_CRASH_AFTER=50ms"), 64<<20))
	prepareAndStart(t, ctx, crash)
	if err := crash.Wait(ctx); !errors.As(err, &ee) || ee.Cause != nil || ee.Code != 3 {
		t.Fatalf("wait for a crash = %v, want exit 3 without a cause", err)
	}
}

// readCgroupFile reads a cgroup file on v1 (path under the controller's
// hierarchy) or v2 (the unified one), whichever the host has.
func readCgroupFile(v1, v2 string) (string, error) {
	for _, p := range []string{v2, v1} {
		b, err := os.ReadFile(filepath.Join(cgroupRoot, p))
		if err == nil {
			return strings.TrimSpace(string(b)), nil
		}
	}
	return "", fmt.Errorf("neither %s nor %s under %s", v1, v2, cgroupRoot)
}
