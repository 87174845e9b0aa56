package vm

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestVagrantfileRejectsBadCounts: `vagrant up` with a count the
// Vagrantfile cannot make a cluster of fails at once, says which setting is
// wrong, and creates nothing: no VM, no volume, no network, no machine in
// Vagrant's state.
func TestVagrantfileRejectsBadCounts(t *testing.T) {
	c := vmEnv(t)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"no managers", []string{"SHOAL_MANAGERS=0"}, `SHOAL_MANAGERS="0" is not a count from 1 to 9`},
		{"workers not a number", []string{"SHOAL_WORKERS=x"}, `SHOAL_WORKERS="x" is not a count from 0 to 99`},
		{"negative workers", []string{"SHOAL_WORKERS=-1"}, `SHOAL_WORKERS="-1" is not a count`},
		{"unknown load balancer", []string{"SHOAL_LB_BACKEND=haproxy"}, `SHOAL_LB_BACKEND="haproxy": want auto, ipvs or nftables`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t)
			before := c.libvirtObjects(t)
			dot := t.TempDir()
			env := append([]string{"VAGRANT_DOTFILE_PATH=" + dot}, tc.env...)
			out, err := c.Vagrant(ctx, env, "", "up", "--parallel")
			if err == nil {
				t.Fatalf("vagrant up with %v succeeded:\n%s", tc.env, out)
			}
			if !strings.Contains(out, tc.want) || !strings.Contains(out, "nothing was created") {
				t.Errorf("vagrant up with %v says:\n%s\nwant it to say %q and that nothing was created", tc.env, out, tc.want)
			}
			if after := c.libvirtObjects(t); after != before {
				t.Errorf("libvirt before vagrant up:\n%s\nafter:\n%s", before, after)
			}
			if machines, _ := filepath.Glob(filepath.Join(dot, "machines", "*")); len(machines) > 0 {
				t.Errorf("vagrant recorded machines: %v", machines)
			}
			if keys, _ := filepath.Glob(filepath.Join(dot, "shoal", "*")); len(keys) > 0 {
				t.Errorf("the Vagrantfile made files: %v", keys)
			}
		})
	}
}

// libvirtObjects lists the domains, networks and volumes libvirt has.
func (c *Cluster) libvirtObjects(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, args := range [][]string{
		{"list", "--all", "--name"},
		{"net-list", "--all", "--name"},
		{"pool-list", "--all", "--name"},
	} {
		out, err := c.host(testContext(t), c.env, "virsh", append([]string{"-q", "-c", "qemu:///system"}, args...)...)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(out)
	}
	// Volumes of the pool Vagrant uses, when it exists.
	if out, err := c.host(testContext(t), c.env, "virsh", "-q", "-c", "qemu:///system", "vol-list", "default"); err == nil {
		b.WriteString(out)
	}
	return b.String()
}
