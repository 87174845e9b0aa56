package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	tc "github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/lab"
	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/overlay"
)

// TestMain runs the suite, then checks that it left nothing behind: no
// containerd namespace of a test node and no shim or shoald process of one.
func TestMain(m *testing.M) {
	code := m.Run()
	if err := leaks(); err != nil {
		fmt.Fprintln(os.Stderr, "leak check:", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

func leaks() error {
	if _, err := os.Stat(tc.ContainerdAddress); err != nil || os.Geteuid() != 0 {
		return nil // the suite was skipped
	}
	var found []string
	c, err := containerd.New(tc.ContainerdAddress)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nss, err := c.NamespaceService().List(ctx)
	if err != nil {
		return err
	}
	for _, ns := range nss {
		if strings.HasPrefix(ns, tc.NamespacePrefix) {
			found = append(found, "containerd namespace "+ns)
		}
	}
	// A shim whose task was just deleted exits on its own a moment
	// later (containerd asks it to shut down and does not wait): give
	// the processes of the last test's nodes time to go before calling
	// them leaked.
	procs := nodeProcesses()
	for deadline := time.Now().Add(20 * time.Second); len(procs) > 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
		procs = nodeProcesses()
	}
	found = append(found, procs...)
	found = append(found, networkLeaks()...)
	if len(found) > 0 {
		return fmt.Errorf("left behind:\n  %s", strings.Join(found, "\n  "))
	}
	return nil
}

// nodeProcesses lists the shoald and shim processes of test nodes.
func nodeProcesses() []string {
	var found []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmd, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(cmd), "\x00")
		line := strings.Join(args, " ")
		if strings.Contains(line, tc.NamespacePrefix) && (strings.Contains(args[0], "shoald") || strings.Contains(args[0], "containerd-shim")) {
			found = append(found, "process "+p.Name()+": "+line)
		}
	}
	return found
}

// networkLeaks lists what the routing mesh could leave in the host's
// namespace or mount table: overlay bridges and VXLAN devices, task veths,
// shoal's nft tables, mounts of test nodes. (Lab nodes' own namespaces,
// where these normally live, are checked by lab.Leftovers.)
func networkLeaks() []string {
	var found []string
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for line := range strings.SplitSeq(string(out), "\n") {
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			name := strings.TrimSuffix(fields[1], ":")
			name, _, _ = strings.Cut(name, "@")
			for _, p := range []string{overlay.BridgePrefix, overlay.VXLANPrefix, attach.HostVethPrefix, overlay.TunnelName} {
				if strings.HasPrefix(name, p) {
					found = append(found, "link "+name)
				}
			}
		}
	}
	if out, err := exec.Command("nft", "list", "tables").Output(); err == nil {
		for line := range strings.SplitSeq(string(out), "\n") {
			if strings.Contains(line, "shoal") {
				found = append(found, "nft "+strings.TrimSpace(line))
			}
		}
	}
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), tc.NamespacePrefix) {
				found = append(found, "network namespace "+e.Name())
			}
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.Contains(line, tc.NamespacePrefix) || strings.Contains(line, lab.NamespacePrefix) {
				found = append(found, "mount "+line)
			}
		}
	}
	return found
}
