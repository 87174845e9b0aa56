package containerd

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	cgroup1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	cgroup2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"
)

// cgroupRoot is where the host's cgroup hierarchies are mounted.
const cgroupRoot = "/sys/fs/cgroup"

// canLimitSwap reports whether the host's cgroups can cap a container's
// swap: always on cgroup v2 (runc skips the file where there is no swap),
// on v1 only with swap accounting (memory.memsw.*), which runc needs.
func canLimitSwap() bool {
	if _, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers")); err == nil {
		return true
	}
	_, err := os.Stat(filepath.Join(cgroupRoot, "memory", "memory.memsw.limit_in_bytes"))
	return err == nil
}

// oomKilled reports whether the kernel's OOM killer killed a process of
// the task's container: the oom_kill count of its memory cgroup, as the
// shim reports it in the task's metrics (cgroup v1's memory.oom_control,
// v2's memory.events), or read from the cgroup when the shim does not
// say. The cgroup lives until the task is deleted, so this works after
// the process exited. Any error counts as no.
func oomKilled(ctx context.Context, t client.Task, cgroupsPath string) bool {
	if m, err := t.Metrics(ctx); err == nil && m.GetData() != nil {
		if v, err := typeurl.UnmarshalAny(m.GetData()); err == nil {
			switch v := v.(type) {
			case *cgroup1stats.Metrics:
				if oc := v.GetMemoryOomControl(); oc != nil {
					return oc.GetOomKill() > 0
				}
			case *cgroup2stats.Metrics:
				if ev := v.GetMemoryEvents(); ev != nil {
					return ev.GetOomKill() > 0
				}
			}
		}
	}
	if !strings.HasPrefix(cgroupsPath, "/") {
		return false // a systemd slice: only the shim knows where
	}
	for _, f := range []string{
		filepath.Join(cgroupRoot, cgroupsPath, "memory.events"),                // v2
		filepath.Join(cgroupRoot, "memory", cgroupsPath, "memory.oom_control"), // v1
	} {
		if n, err := readOOMKills(f); err == nil {
			return n > 0
		}
	}
	return false
}

// readOOMKills reads the "oom_kill N" line of a memory.events or
// memory.oom_control file.
func readOOMKills(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseOOMKills(f)
}

func parseOOMKills(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "oom_kill "); ok {
			return strconv.ParseUint(strings.TrimSpace(rest), 10, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no oom_kill line")
}
