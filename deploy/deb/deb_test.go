// Package deb holds the test of shoal's Debian package (`make deb`, from
// nfpm.yaml here) and of `make install`.
package deb

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// repoRoot is the checkout the package is built from.
const repoRoot = "../.."

// unit is the systemd unit both ship.
var unit = filepath.Join(repoRoot, "deploy/systemd/shoald.service")

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	if _, err := os.Stat(unit); err != nil {
		t.Skipf("no systemd unit to package yet (%v)", err)
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDeb builds the package as `make deb` does and reads it back with
// dpkg-deb: its name, control fields and dependencies, its files and
// their modes, a unit that starts the packaged shoald, and binaries that
// run.
func TestDeb(t *testing.T) {
	need(t, "make", "dpkg-deb")
	out := t.TempDir()
	const version = "0.0.0+test1"
	run(t, "make", "-C", repoRoot, "deb", "DEB_OUT="+out, "VERSION="+version)
	deb := filepath.Join(out, "shoal_"+version+"_amd64.deb")
	if _, err := os.Stat(deb); err != nil {
		t.Fatalf("make deb made no %s: %v", filepath.Base(deb), err)
	}

	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Depends", "Maintainer", "Description"} {
		fields[f] = strings.TrimSpace(run(t, "dpkg-deb", "--field", deb, f))
	}
	for f, want := range map[string]string{"Package": "shoal", "Version": version, "Architecture": "amd64"} {
		if fields[f] != want {
			t.Errorf("%s: %q, want %q", f, fields[f], want)
		}
	}
	var depends []string
	for _, d := range strings.Split(fields["Depends"], ",") {
		depends = append(depends, strings.Fields(d)[0])
	}
	for _, want := range []string{"containerd", "runc", "nftables", "iproute2"} {
		if !slices.Contains(depends, want) {
			t.Errorf("Depends: %q lacks %s", fields["Depends"], want)
		}
	}
	if fields["Maintainer"] == "" || fields["Description"] == "" {
		t.Errorf("Maintainer %q, Description %q: both are required", fields["Maintainer"], fields["Description"])
	}
	info := run(t, "dpkg-deb", "--info", deb)
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		if !regexp.MustCompile(`\d+ bytes,\s+\d+ lines\s+\*\s+` + script + `\s`).MatchString(info) {
			t.Errorf("no executable %s maintainer script:\n%s", script, info)
		}
	}

	modes := map[string]string{}
	for _, line := range strings.Split(run(t, "dpkg-deb", "--contents", deb), "\n") {
		f := strings.Fields(line)
		if len(f) == 6 && !strings.HasPrefix(f[0], "d") {
			modes[strings.TrimPrefix(f[5], ".")] = f[0]
		}
	}
	want := map[string]string{
		"/usr/bin/shoald":                        "-rwxr-xr-x",
		"/usr/bin/shoalctl":                      "-rwxr-xr-x",
		"/usr/lib/systemd/system/shoald.service": "-rw-r--r--",
	}
	for path, mode := range want {
		if modes[path] != mode {
			t.Errorf("%s: mode %q, want %q (contents: %v)", path, modes[path], mode, modes)
		}
	}
	for path := range modes {
		if _, ok := want[path]; !ok {
			t.Errorf("unexpected file %s in the package", path)
		}
	}

	root := t.TempDir()
	run(t, "dpkg-deb", "--extract", deb, root)
	svc, err := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/shoald.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(svc), "/usr/bin/shoald") || strings.Contains(string(svc), "/usr/local/bin") {
		t.Errorf("the packaged unit must start /usr/bin/shoald:\n%s", svc)
	}
	for _, bin := range []string{"shoald", "shoalctl"} {
		if help := run(t, filepath.Join(root, "usr/bin", bin), "--help"); !strings.Contains(help, "Usage:") {
			t.Errorf("%s --help:\n%s", bin, help)
		}
	}
	if help := run(t, filepath.Join(root, "usr/bin/shoald"), "leave", "--help"); !strings.Contains(help, "--force") {
		t.Errorf("the packaged shoald has no leave --force:\n%s", help)
	}
}

// TestMakeInstall installs into a staging directory as `make install`
// does on a host: both binaries under PREFIX and a unit that starts them
// there.
func TestMakeInstall(t *testing.T) {
	need(t, "make", "install")
	dest := t.TempDir()
	run(t, "make", "-C", repoRoot, "install", "DESTDIR="+dest, "PREFIX=/opt/shoal")
	for _, bin := range []string{"shoald", "shoalctl"} {
		st, err := os.Stat(filepath.Join(dest, "opt/shoal/bin", bin))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, mode %v; want an executable", bin, err, st)
		}
	}
	svc, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/shoald.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(svc), "/opt/shoal/bin/shoald") || strings.Contains(string(svc), "/usr/local/bin") {
		t.Errorf("the installed unit must start /opt/shoal/bin/shoald:\n%s", svc)
	}
}
