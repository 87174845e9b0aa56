package testcluster

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/image"
)

type snapshotInfo = snapshots.Info

const snapshotActive = snapshots.KindActive

func protojsonUnmarshal(b []byte, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

// RemoveNamespace deletes everything in a containerd namespace, then the
// namespace.
func RemoveNamespace(namespace string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return image.PurgeNamespace(ctx, ContainerdAddress, namespace)
}

// WaitShims waits for the containerd shims of namespace to exit: containerd
// asks a shim to shut down when its task is deleted and does not wait for
// it. A shim still there after the grace is a leak; it is killed (so that
// the machine stays clean) and named in the error.
func WaitShims(namespace string, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		pids := shimsOf(namespace)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			return fmt.Errorf("containerd shims of %s still running %v after their tasks were deleted (killed)", namespace, grace)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func shimsOf(namespace string) []int {
	var pids []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		var pid int
		if _, err := fmt.Sscan(p.Name(), &pid); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		for i, a := range args[:len(args)-1] {
			if a == "-namespace" && args[i+1] == namespace {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}
