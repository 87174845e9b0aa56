package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	tc "github.com/shoal-project/shoal/internal/testcluster"
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
	if len(found) > 0 {
		return fmt.Errorf("left behind:\n  %s", strings.Join(found, "\n  "))
	}
	return nil
}
