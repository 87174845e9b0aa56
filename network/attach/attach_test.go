package attach_test

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/attach/netnstest"
)

func TestMain(m *testing.M) { netnstest.Main(m) }

func TestHostVethName(t *testing.T) {
	a, b := attach.HostVethName("task1/net1"), attach.HostVethName("task2/net1")
	if len(a) > 15 || !strings.HasPrefix(a, attach.HostVethPrefix) {
		t.Fatalf("HostVethName = %q: want at most 15 bytes starting with %s", a, attach.HostVethPrefix)
	}
	if a == b || a != attach.HostVethName("task1/net1") {
		t.Fatalf("names %q and %q: want stable and distinct", a, b)
	}
}

func TestAttachRefusesBadSpec(t *testing.T) {
	good := attach.Spec{ID: "t", NetNSPath: "/run/netns/x", Bridge: "shb-1",
		Addr: netip.MustParsePrefix("10.1.0.2/24"), Gateway: netip.MustParseAddr("10.1.0.1"), MTU: 1450}
	tests := []struct {
		name    string
		edit    func(*attach.Spec)
		wantErr string
	}{
		{"no id", func(s *attach.Spec) { s.ID = "" }, "no attachment ID"},
		{"no netns", func(s *attach.Spec) { s.NetNSPath = "" }, "no task network namespace"},
		{"no bridge", func(s *attach.Spec) { s.Bridge = "" }, "no bridge"},
		{"ipv6", func(s *attach.Spec) { s.Addr = netip.MustParsePrefix("fd00::2/64") }, "need an IPv4"},
		{"gateway elsewhere", func(s *attach.Spec) { s.Gateway = netip.MustParseAddr("10.2.0.1") }, "not in 10.1.0.0/24"},
		{"short mac", func(s *attach.Spec) { s.MAC = []byte{1, 2} }, "not an Ethernet address"},
		{"tiny mtu", func(s *attach.Spec) { s.MTU = 10 }, "below the IPv4 minimum"},
	}
	// Bad specs are refused before any kernel call, so this runs unprivileged.
	a := &attach.Attacher{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.edit(&s)
			err := a.Attach(context.Background(), s)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Attach = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// hostWithBridge is a node namespace with a bridge br0 holding the gateway.
func hostWithBridge(t testing.TB) *netnstest.NS {
	host := netnstest.New(t, "host")
	host.MustRun(t, "ip", "link", "add", "br0", "type", "bridge")
	host.MustRun(t, "ip", "addr", "add", "10.233.0.1/24", "dev", "br0")
	host.MustRun(t, "ip", "link", "set", "br0", "up")
	return host
}

func newAttacher(t testing.TB, host *netnstest.NS) *attach.Attacher {
	a, err := attach.NewAttacher(host.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func taskSpec(task *netnstest.NS) attach.Spec {
	return attach.Spec{
		ID: "task1/net1", NetNSPath: task.Path, Bridge: "br0",
		Addr: netip.MustParsePrefix("10.233.0.2/24"), Gateway: netip.MustParseAddr("10.233.0.1"), MTU: 1450,
	}
}

func TestAttachConfiguresTaskAndDetachRemovesIt(t *testing.T) {
	netnstest.RequireKernel(t)
	host, task := hostWithBridge(t), netnstest.New(t, "task")
	a := newAttacher(t, host)
	ctx := context.Background()
	spec := taskSpec(task)
	if err := a.Attach(ctx, spec); err != nil {
		t.Fatal(err)
	}
	hostEnd := attach.HostVethName(spec.ID)

	link := task.MustRun(t, "ip", "-o", "link", "show", "eth0")
	for _, want := range []string{"mtu 1450 ", "state UP", "link/ether 02:42:0a:e9:00:02"} {
		if !strings.Contains(link, want) {
			t.Errorf("task eth0 %q lacks %q", link, want)
		}
	}
	if out := task.MustRun(t, "ip", "-4", "-o", "addr", "show", "dev", "eth0"); !strings.Contains(out, "10.233.0.2/24") {
		t.Errorf("task eth0 addresses: %s", out)
	}
	if out := task.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(out, "default via 10.233.0.1 dev eth0") {
		t.Errorf("task default route: %q", out)
	}
	if out := task.MustRun(t, "ip", "-o", "link", "show", "lo"); !strings.Contains(out, "UP") {
		t.Errorf("task loopback not up: %s", out)
	}
	if out := host.MustRun(t, "ip", "-o", "link", "show", hostEnd); !strings.Contains(out, "master br0") || !strings.Contains(out, "mtu 1450 ") {
		t.Errorf("host end: %s; want on br0 with mtu 1450", out)
	}
	// The gateway answers across the veth and the bridge.
	netnstest.Listen(t, host, "10.233.0.1:7000")
	if err := netnstest.Dial(task, "10.233.0.1:7000"); err != nil {
		t.Fatalf("task to its gateway: %v", err)
	}

	// Attaching again (a retry after a crash) replaces the pair.
	if err := a.Attach(ctx, spec); err != nil {
		t.Fatalf("second Attach: %v", err)
	}

	if err := a.Detach(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := host.Run("ip", "link", "show", hostEnd); err == nil {
		t.Errorf("host end %s still there after Detach", hostEnd)
	}
	if _, err := task.Run("ip", "link", "show", "eth0"); err == nil {
		t.Error("task eth0 still there after Detach")
	}
	if err := a.Detach(ctx, spec.ID); err != nil {
		t.Fatalf("Detach of what is detached: %v", err)
	}
}

func TestAttachFailureLeavesNothing(t *testing.T) {
	netnstest.RequireKernel(t)
	host, task := hostWithBridge(t), netnstest.New(t, "task")
	a := newAttacher(t, host)
	spec := taskSpec(task)
	spec.Bridge = "nosuchbr"
	if err := a.Attach(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "nosuchbr") {
		t.Fatalf("Attach to a missing bridge: %v", err)
	}
	// The task already has an eth0: creating the peer fails, nothing stays.
	task.MustRun(t, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
	spec.Bridge = "br0"
	if err := a.Attach(context.Background(), spec); err == nil {
		t.Fatal("Attach into a namespace that has an eth0 succeeded")
	}
	if _, err := host.Run("ip", "link", "show", attach.HostVethName(spec.ID)); err == nil {
		t.Error("a failed Attach left its host end")
	}
}

// TestMasqueradeGivesTasksEgress: a task behind node "host" reaches an
// "outside" namespace that has no route back to the overlay only while the
// masquerade rule of its subnet is in place.
func TestMasqueradeGivesTasksEgress(t *testing.T) {
	netnstest.RequireKernel(t)
	host, task, outside := hostWithBridge(t), netnstest.New(t, "task"), netnstest.New(t, "outside")
	netnstest.Link(t, host, "ul0", "10.234.0.1/30", outside, "ul0", "10.234.0.2/30")
	host.MustRun(t, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	a := newAttacher(t, host)
	if err := a.Attach(context.Background(), taskSpec(task)); err != nil {
		t.Fatal(err)
	}
	netnstest.Listen(t, outside, "10.234.0.2:7000")

	if err := netnstest.Dial(task, "10.234.0.2:7000"); err == nil {
		t.Fatal("the outside answered without masquerade: the test proves nothing")
	}
	m, err := attach.NewMasquerader(host.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	subnet := netip.MustParsePrefix("10.233.0.0/24")
	for range 2 { // the second is a no-op
		if err := m.Ensure(subnet); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := m.Subnets(); err != nil || len(got) != 1 || got[0] != subnet {
		t.Fatalf("Subnets = %v, %v; want [%s]", got, err, subnet)
	}
	if err := netnstest.Dial(task, "10.234.0.2:7000"); err != nil {
		t.Fatalf("task to outside with masquerade: %v", err)
	}
	// Removing one subnet's rule leaves the others.
	other := netip.MustParsePrefix("10.99.0.0/24")
	if err := m.Ensure(other); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(subnet); err != nil {
		t.Fatal(err)
	}
	if err := netnstest.Dial(task, "10.234.0.2:7000"); err == nil {
		t.Fatal("task reached the outside after its masquerade rule was removed")
	}
	if out := host.MustRun(t, "nft", "list", "table", "ip", attach.NATTable); !strings.Contains(out, "10.99.0.0/24") || strings.Contains(out, "10.233.0.0/24") {
		t.Fatalf("table after removing one subnet:\n%s", out)
	}
	if err := m.Remove(other); err != nil {
		t.Fatal(err)
	}
	if out := host.MustRun(t, "nft", "list", "tables"); strings.Contains(out, attach.NATTable) {
		t.Fatalf("table %s left after its last rule was removed: %s", attach.NATTable, out)
	}
}

// BenchmarkAttach times one task attachment: veth pair into the task's
// namespace, host end on the bridge, address, MTU, links up, default route.
func BenchmarkAttach(b *testing.B) {
	netnstest.RequireKernel(b)
	host, task := hostWithBridge(b), netnstest.New(b, "task")
	a := newAttacher(b, host)
	ctx := context.Background()
	spec := taskSpec(task)
	for b.Loop() {
		if err := a.Attach(ctx, spec); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := a.Detach(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkDetach times removing one task attachment.
func BenchmarkDetach(b *testing.B) {
	netnstest.RequireKernel(b)
	host, task := hostWithBridge(b), netnstest.New(b, "task")
	a := newAttacher(b, host)
	ctx := context.Background()
	spec := taskSpec(task)
	for b.Loop() {
		b.StopTimer()
		if err := a.Attach(ctx, spec); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := a.Detach(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
	}
}
