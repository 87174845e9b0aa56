package vm

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The kernel tests of packages whose real subject is a kernel the host
// may not have (IPVS), built here as static test binaries and run in a VM
// as root: docs/networking.md, Tests.
const (
	// vmTestDir is where the test binaries go in a VM, one directory per
	// package with its testdata (golden files), since a test binary reads
	// testdata from its working directory.
	vmTestDir = "/tmp/shoal-tests"
	// kernelSuiteTimeout bounds one test binary in a VM (its -test.timeout);
	// the IPVS suite builds dozens of namespaces on an emulated CPU.
	kernelSuiteTimeout = 15 * time.Minute
	// pollEvery is how often a long command in a VM is checked on.
	pollEvery = 3 * time.Second
)

// testBinary is a package's test binary: name.test, built from pkg.
type testBinary struct{ name, pkg string }

var (
	ipvsTests     = testBinary{"ipvs", "./network/lb/ipvs"}
	nftTests      = testBinary{"nft", "./network/lb/nft"}
	netagentTests = testBinary{"netagent", "./worker/netagent"}
	overlayTests  = testBinary{"overlay", "./network/overlay"}
)

// TestKernelSuites runs the kernel tests of the load balancer backends
// and of the network agent on the VMs' kernel, which has IPVS (Debian 12),
// with SHOAL_EXPECT_IPVS=1 so that a missing IPVS fails instead of
// skipping: the IPVS and nft backends' whole suites (conformance, traffic,
// marker), the network agent's mesh across two nodes, its choice of
// backend, its teardown and its removal of the other backend's rules, and
// the overlay's WireGuard tunnel (with SHOAL_EXPECT_WIREGUARD=1). The
// runs are spread over the three VMs so that each VM's share takes about
// as long (1-1.5 minutes emulated on a quiet machine, 4-5 on a busy one);
// the runs of one VM go one after the other.
func TestKernelSuites(t *testing.T) {
	c := vmCluster(t)
	type run struct {
		bin  testBinary
		args []string
	}
	// The traffic tests take most of each suite's time.
	const nftTraffic = "TestKernelTraffic|TestKernelPublishedPortsAndVIPs|TestKernelAnyPortVIP"
	for node, runs := range map[string][]run{
		"worker1": {
			{ipvsTests, []string{"-test.run", "TestKernelTraffic"}},
			{nftTests, []string{"-test.skip", nftTraffic}},
		},
		"worker2": {
			{ipvsTests, []string{"-test.skip", "TestKernelTraffic"}},
			{overlayTests, []string{"-test.run", "TestWireGuardTunnel"}},
		},
		"manager1": {
			{netagentTests, []string{"-test.run", "TestKernelMeshAcrossNodes|TestKernelAutoPicks|TestKernelTeardown|TestKernelOtherBackendRemoved"}},
			{nftTests, []string{"-test.run", nftTraffic}},
		},
	} {
		t.Run(node, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			var bins []testBinary
			for _, r := range runs {
				bins = append(bins, r.bin)
			}
			if err := c.installTests(ctx, node, bins...); err != nil {
				t.Fatal(err)
			}
			for _, r := range runs {
				t0 := time.Now()
				out, err := c.runTests(ctx, node, r.bin, append([]string{"-test.v", "-test.timeout", kernelSuiteTimeout.String()}, r.args...)...)
				what := fmt.Sprintf("%s.test %s on %s (%.0f s)", r.bin.name, strings.Join(r.args, " "), node, time.Since(t0).Seconds())
				if err != nil {
					t.Errorf("%s: %v\n%s", what, err, out)
					continue
				}
				t.Logf("%s:\n%s", what, testSummary(out))
			}
		})
	}
}

// testSummary is what a passing test binary's -test.v output says in
// short: each top-level test's result, and every skip with its reason.
func testSummary(out string) string {
	var b strings.Builder
	lines := strings.Split(out, "\n")
	for i, line := range lines {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "--- "), line == "PASS", strings.HasPrefix(line, "ok"):
			b.WriteString(line + "\n")
		case strings.HasPrefix(trimmed, "--- SKIP"):
			b.WriteString(line + "\n")
			if i+1 < len(lines) {
				b.WriteString(lines[i+1] + "\n") // the reason
			}
		}
	}
	return b.String()
}

// testBuild builds every test binary the tier runs in VMs, once per run.
var testBuild struct {
	once sync.Once
	dir  string
	err  error
}

// buildTests builds the test binaries (static, stripped: they travel over
// ssh) into dir/NAME/NAME.test beside a copy of the package's testdata.
func (c *Cluster) buildTests(ctx context.Context) (string, error) {
	testBuild.once.Do(func() {
		t0 := time.Now()
		dir := filepath.Join(c.work, "tests")
		// A kept cluster's work dir has an earlier run's.
		if err := os.RemoveAll(dir); err != nil {
			testBuild.err = err
			return
		}
		bins := []testBinary{ipvsTests, nftTests, netagentTests, overlayTests}
		for _, b := range bins {
			if err := os.MkdirAll(filepath.Join(dir, b.name), 0o755); err != nil {
				testBuild.err = err
				return
			}
			_, err := c.host(ctx, append(os.Environ(), "CGO_ENABLED=0"), "go", "test", "-c", "-ldflags=-s -w",
				"-o", filepath.Join(dir, b.name, b.name+".test"), b.pkg)
			if err != nil {
				testBuild.err = err
				return
			}
			if err := os.CopyFS(filepath.Join(dir, b.name, "testdata"), os.DirFS(filepath.Join(c.root, b.pkg, "testdata"))); err != nil && !os.IsNotExist(err) {
				testBuild.err = fmt.Errorf("copy the testdata of %s: %w", b.pkg, err)
				return
			}
		}
		testBuild.dir = dir
		logf("test binaries (CGO_ENABLED=0 go test -c): %.1f s", time.Since(t0).Seconds())
	})
	return testBuild.dir, testBuild.err
}

// installTests copies test binaries with their testdata into a VM, under
// vmTestDir, in one upload.
func (c *Cluster) installTests(ctx context.Context, node string, bins ...testBinary) error {
	dir, err := c.buildTests(ctx)
	if err != nil {
		return err
	}
	tarball := filepath.Join(c.work, "tests-"+node+".tar.gz")
	args := []string{"-czf", tarball, "-C", dir}
	for _, b := range bins {
		args = append(args, b.name)
	}
	if _, err := c.host(ctx, nil, "tar", args...); err != nil {
		return err
	}
	defer os.Remove(tarball)
	if err := c.CopyFile(ctx, node, tarball, vmTestDir+".tar.gz"); err != nil {
		return fmt.Errorf("copy test binaries to %s: %w", node, err)
	}
	_, err = c.Run(ctx, node, fmt.Sprintf("mkdir -p %[1]s && tar -xzf %[1]s.tar.gz -C %[1]s && rm %[1]s.tar.gz", vmTestDir))
	return err
}

// runTests runs a test binary installed by installTests as root in its
// directory on a VM, with SHOAL_EXPECT_IPVS=1 and SHOAL_EXPECT_WIREGUARD=1
// (the VMs' kernel has both: a test that would skip without them fails),
// and returns its output; an error when it failed.
func (c *Cluster) runTests(ctx context.Context, node string, bin testBinary, args ...string) (string, error) {
	dir := path.Join(vmTestDir, bin.name)
	return c.runLong(ctx, node, dir, "env SHOAL_EXPECT_IPVS=1 SHOAL_EXPECT_WIREGUARD=1 ./"+bin.name+".test "+shellQuote(args...))
}

// runLong runs a shell command as root in dir on a VM, in the background
// (it may take longer than one ssh command is given), waits for it and
// returns its output, stdout and stderr together. A status other than 0
// is an error.
func (c *Cluster) runLong(ctx context.Context, node, dir, command string) (string, error) {
	d := shellQuote(dir)
	script := fmt.Sprintf("{ cd %s && %s; } >%s/.out 2>&1; echo $? >%s/.rc", d, command, d, d)
	if _, err := c.Run(ctx, node, fmt.Sprintf("sudo mkdir -p %s && sudo rm -f %s/.rc && sudo setsid -f sh -c %s </dev/null >/dev/null 2>&1", d, d, shellQuote(script))); err != nil {
		return "", err
	}
	for {
		select {
		case <-ctx.Done():
			out, _ := c.Run(context.Background(), node, "sudo cat "+shellQuote(path.Join(dir, ".out")))
			return out, fmt.Errorf("%s on %s: %w", command, node, ctx.Err())
		case <-time.After(pollEvery):
		}
		rc, err := c.Run(ctx, node, "sudo cat "+shellQuote(path.Join(dir, ".rc"))+" 2>/dev/null || true")
		if err != nil || strings.TrimSpace(rc) == "" {
			continue
		}
		out, err := c.Run(ctx, node, "sudo cat "+shellQuote(path.Join(dir, ".out")))
		if err != nil {
			return "", err
		}
		if rc = strings.TrimSpace(rc); rc != "0" {
			return out, fmt.Errorf("%s on %s: exit status %s", command, node, rc)
		}
		return out, nil
	}
}
