package shoal

import (
	"errors"
	"fmt"
	"go/build"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// module is the import path every package of ours starts with.
const module = "github.com/shoal-project/shoal"

// Package patterns, module-relative: "x" is package x, "x/..." is x and
// every package below it. Patterns with a dot in the first element are
// third-party import paths.
var (
	// roles are the packages that do the work of a node; the daemon, the
	// lab and the CLI assemble or drive them.
	roles = []string{"api/...", "manager/...", "worker/...", "scheduler/...", "network/...", "identity/...", "image/...", "seal/..."}
	// assemblers sit above the roles.
	assemblers = []string{"daemon/...", "lab/...", "ctl/...", "cmd/..."}
	// kernel are the libraries that program the kernel.
	kernel = []string{"github.com/vishvananda/...", "github.com/google/nftables/...", "github.com/moby/ipvs/...", "github.com/mdlayher/netlink/..."}
)

// layers are the rules the doc.go files state about who may import whom,
// one per line with its reason. They cover the packages' own (non-test)
// files; tests may import what they need.
var layers = []struct {
	from []string
	// only, when not nil, lists the only packages of ours from may import.
	only []string
	// not lists what from must not import.
	not []string
	// testSupport: from must not import test support (below internal/,
	// or a package whose name ends in "test").
	testSupport bool
	why         string
}{
	{from: []string{"api/..."}, only: []string{},
		why: "the API types are the bottom layer that every package imports; they import nothing of ours"},
	{from: roles, not: assemblers,
		why: "the daemon, the lab and the CLI assemble or drive the roles; a role importing them turns the architecture upside down"},
	{from: append(slices.Clone(roles), "daemon/...", "lab/...", "ctl/..."), testSupport: true,
		why: "test support (internal/..., *test packages) is for _test files: shoald and shoalctl never link it"},
	{from: []string{"scheduler/..."}, only: []string{"api/..."},
		why: "placement is a pure function of a snapshot of nodes and tasks: no store, no raft, no I/O (scheduler/doc.go)"},
	{from: []string{"identity"}, only: []string{"api/..."},
		why: "identity sits below every role and imports only the API types (identity/doc.go)"},
	{from: []string{"seal/..."}, only: []string{},
		why: "sealing is a primitive below every role that keeps data at rest: it imports nothing of ours (seal/doc.go)"},
	{from: []string{"image/..."}, not: []string{"manager/...", "worker/...", "scheduler/...", "network/...", "lab/..."},
		why: "managers, workers, the lab and the test image builder import image; it imports none of them (image/doc.go)"},
	{from: []string{"network/..."}, not: []string{"manager/...", "worker/...", "scheduler/...", "identity/...", "image/...", "github.com/containerd/..."},
		why: "the data plane is driven by worker/netagent; it never talks to the managers or to containerd (network/doc.go)"},
	{from: []string{"network/lb"}, only: []string{}, not: kernel,
		why: "the load balancer interface is types and validation only: it owns no kernel state and talks to nothing (network/lb/doc.go)"},
	{from: []string{"network/ipam"}, only: []string{}, not: kernel,
		why: "IPAM is pure bookkeeping for the managers' allocator: no kernel, no store, no I/O (network/ipam/doc.go)"},
	{from: []string{"ctl/..."}, not: []string{"manager/...", "worker/...", "scheduler/...", "daemon/..."},
		why: "shoalctl is a thin client of the Control API: nothing in it may import manager, worker or scheduler code (ctl/doc.go)"},
	{from: []string{"lab/..."}, not: []string{"manager/...", "worker/...", "scheduler/...", "daemon/...", "ctl/..."},
		why: "the lab drives shoald only through its command line and the Control API; it knows nothing of shoald's insides (lab/doc.go)"},
	{from: []string{"manager/..."}, not: []string{"worker/..."},
		why: "managers never run containers (manager/doc.go); a node that is both is wired by the daemon"},
	{from: []string{"worker/..."}, not: []string{"manager/..."},
		why: "a worker owns nothing of the managers' state and reaches them only through the Dispatcher API (worker/doc.go)"},
	{from: []string{"manager/allocator"}, only: []string{"api/...", "network/ipam"},
		why: "the allocator only decides: the store, raft and the lock are stored.Allocator's (manager/allocator/doc.go)"},
	{from: []string{"manager/orchestrator"}, only: []string{"api/...", "scheduler"},
		why: "the orchestrator only decides: it does not read or write the store or talk to raft; it asks the scheduler's constraint parser which nodes a global service may run on (manager/orchestrator/doc.go)"},
	{from: []string{"manager/store"}, not: []string{"manager/state", "github.com/hashicorp/raft", "github.com/hashicorp/raft-boltdb/..."},
		why: "the store does not talk to raft: manager/state does, and calls Apply in log order (manager/store/doc.go)"},
}

// knownExceptions are imports that break a rule today, each with the work
// that removes it. One that is gone fails the test, so that it is deleted
// here too.
var knownExceptions = []struct{ from, to, why string }{}

// TestLayering checks the import graph against layers.
func TestLayering(t *testing.T) {
	pkgs := ourPackages(t)
	if len(pkgs) < 20 {
		t.Fatalf("found only %d packages; is the test run from the module root?", len(pkgs))
	}
	used := make([]bool, len(knownExceptions))
	for _, p := range pkgs {
		from := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		for _, imp := range p.Imports {
			to := strings.TrimPrefix(strings.TrimPrefix(imp, module), "/")
			ours := strings.HasPrefix(imp, module+"/")
			for _, l := range layers {
				if !matchAny(l.from, from) || (l.testSupport && isTestSupport(from)) {
					continue
				}
				var broken bool
				switch {
				case l.testSupport:
					broken = ours && isTestSupport(to)
				case matchAny(l.not, to) && (ours || isExternal(l.not, to)):
					broken = true
				case l.only != nil && ours && !matchAny(l.only, to):
					broken = true
				}
				if !broken {
					continue
				}
				if i := slices.IndexFunc(knownExceptions, func(e struct{ from, to, why string }) bool { return e.from == from && e.to == to }); i >= 0 {
					used[i] = true
					t.Logf("known exception: %s imports %s (%s)", from, to, knownExceptions[i].why)
					continue
				}
				t.Errorf("%s imports %s (%s): %s", from, to, position(p.ImportPos[imp]), l.why)
			}
		}
	}
	for i, e := range knownExceptions {
		if !used[i] {
			t.Errorf("known exception %s -> %s (%s) no longer occurs: delete it from knownExceptions", e.from, e.to, e.why)
		}
	}
}

// ourPackages are the module's packages, read with go/build for this
// platform.
func ourPackages(t *testing.T) []*build.Package {
	t.Helper()
	var pkgs []*build.Package
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		name := d.Name()
		if path != "." && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "testdata" || name == "vendor") {
			return filepath.SkipDir
		}
		p, err := build.ImportDir(path, 0)
		var noGo *build.NoGoError
		if errors.As(err, &noGo) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read package %s: %w", path, err)
		}
		p.ImportPath = module
		if path != "." {
			p.ImportPath += "/" + filepath.ToSlash(path)
		}
		pkgs = append(pkgs, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

// match reports whether path (module-relative for ours, full for others)
// is pattern.
func match(pattern, path string) bool {
	if base, ok := strings.CutSuffix(pattern, "/..."); ok {
		return path == base || strings.HasPrefix(path, base+"/")
	}
	return path == pattern
}

func matchAny(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool { return match(p, path) })
}

// isExternal reports whether path matches one of the third-party patterns.
func isExternal(patterns []string, path string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool {
		first, _, _ := strings.Cut(p, "/")
		return strings.Contains(first, ".") && match(p, path)
	})
}

// isTestSupport reports whether one of our packages is test support.
func isTestSupport(path string) bool {
	return match("internal/...", path) || strings.HasSuffix(path, "test")
}

func position(ps []token.Position) string {
	if len(ps) == 0 {
		return "?"
	}
	wd, _ := os.Getwd()
	p := ps[0]
	if rel, err := filepath.Rel(wd, p.Filename); err == nil {
		p.Filename = rel
	}
	return p.String()
}
