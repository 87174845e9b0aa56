package netagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	miekg "github.com/miekg/dns"
	"github.com/vishvananda/netns"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/network/attach/netnstest"
	"github.com/shoal-project/shoal/network/lb"
)

// dnsHelperEnv makes the test binary, re-executed inside a task's
// namespace, ask one DNS question (see dnsQuery): no thread of the test
// itself enters a namespace.
const dnsHelperEnv = "SHOAL_NETAGENT_DNS_HELPER"

func TestMain(m *testing.M) {
	if q := os.Getenv(dnsHelperEnv); q != "" {
		os.Exit(dnsHelper(q))
	}
	netnstest.Main(m)
}

// dnsHelper asks server (ip:port) for the A records of name and prints the
// answer's rcode and addresses, sorted.
func dnsHelper(q string) int {
	server, name, _ := strings.Cut(q, " ")
	msg := new(miekg.Msg)
	msg.SetQuestion(miekg.Fqdn(name), miekg.TypeA)
	c := &miekg.Client{Timeout: netnstest.DialTimeout}
	resp, _, err := c.Exchange(msg, server)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	var addrs []string
	for _, rr := range resp.Answer {
		if a, ok := rr.(*miekg.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	slices.Sort(addrs)
	fmt.Println(strings.TrimSpace(miekg.RcodeToString[resp.Rcode] + " " + strings.Join(addrs, " ")))
	return 0
}

func dnsQuery(t *testing.T, ns *netnstest.NS, server, name string) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe)
	cmd.Env = append(os.Environ(), dnsHelperEnv+"="+server+" "+name)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("DNS query for %s to %s from %s: %v: %s", name, server, ns.Name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// countingBalancer counts the Applies that reach the real balancer and can
// be told to fail the next one.
type countingBalancer struct {
	lb.Balancer
	mu       sync.Mutex
	applies  int
	failNext bool
}

func (c *countingBalancer) Apply(ctx context.Context, s lb.State) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failNext {
		c.failNext = false
		return errors.New("injected failure")
	}
	c.applies++
	return c.Balancer.Apply(ctx, s)
}

func (c *countingBalancer) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applies
}

// The kernel test's cluster, one node of it real: node n1 (underlay
// 10.240.0.1, ingress address 10.250.0.2) runs task t1 of service web
// (published 8080 → 80, VIP 10.251.0.2 on app) and task c1 of service
// client on app. Node n2 only exists in the view.
const (
	kNode      = "n1"
	kDataAddr  = "10.240.0.1"
	kClient    = "10.240.0.2"
	kDNSPort   = 5354
	kIngressGW = "10.250.0.1"
	kAppGW     = "10.251.0.1"
	kVIP       = "10.251.0.2"
)

func kernelDelta() *api.NetworkDelta {
	ing := &api.Network{Id: "ing", Subnet: "10.250.0.0/24", Gateway: kIngressGW, Vni: 4250, Ingress: true}
	app := &api.Network{Id: "app", Subnet: "10.251.0.0/24", Gateway: kAppGW, Vni: 4251}
	return &api.NetworkDelta{
		Networks: []*api.Network{ing, app},
		Peers: []*api.NetworkPeer{
			peer(kNode, kDataAddr, "10.250.0.2"),
			// A node that is not there: its VXLAN traffic goes to an
			// address of the client namespace, which drops it.
			peer("n2", kClient, "10.250.0.3"),
		},
		Endpoints: []*api.NetworkEndpoint{
			ep("t1", kNode, "web", true, att("ing", "10.250.0.10/24"), att("app", "10.251.0.10/24")),
			ep("c1", kNode, "client", true, att("app", "10.251.0.20/24")),
		},
		Services: []*api.ServiceEndpoint{
			svc("web", "web", "vip", []*api.PortConfig{port("tcp", 80, 8080, "ingress", "")},
				&api.EndpointVIP{NetworkId: "app", Addr: kVIP + "/24"}),
			svc("client", "client", "vip", nil),
		},
	}
}

func taskOf(e *api.NetworkEndpoint) *api.Task {
	return &api.Task{Id: e.TaskId, ServiceId: e.ServiceId, NodeId: e.NodeId, Networks: e.Networks}
}

func TestKernelAgent(t *testing.T) {
	netnstest.RequireKernel(t)
	hostForward, err := os.ReadFile(ipForwardPath)
	if err != nil {
		t.Fatal(err)
	}
	node, client := netnstest.New(t, "node"), netnstest.New(t, "cli")
	netnstest.Link(t, node, "ul0", kDataAddr+"/24", client, "eth0", kClient+"/24")
	taskWeb, taskClient := netnstest.New(t, "web"), netnstest.New(t, "clt")

	a, err := New(Config{
		NodeID:    kNode,
		DataAddr:  netip.MustParseAddr(kDataAddr),
		LBBackend: LBNFTables,
		StateDir:  t.TempDir(),
		NetNSPath: node.Path,
		DNSPort:   kDNSPort,
		Upstreams: []string{},
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	counter := &countingBalancer{Balancer: a.balancer}
	a.balancer = counter

	ctx := context.Background()
	delta := kernelDelta()
	if err := a.Apply(ctx, delta, true); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	web, clientTask := taskOf(delta.Endpoints[0]), taskOf(delta.Endpoints[1])
	for _, x := range []struct {
		task *api.Task
		ns   *netnstest.NS
	}{{web, taskWeb}, {clientTask, taskClient}} {
		if err := a.Attach(ctx, x.task, x.ns.Path); err != nil {
			t.Fatalf("Attach %s: %v", x.task.Id, err)
		}
		t.Cleanup(func() { a.Detach(ctx, x.task) })
	}
	// Attaching again leaves the interfaces as they are: same ifindex.
	before := taskWeb.MustRun(t, "ip", "-o", "link", "show")
	if err := a.Attach(ctx, web, taskWeb.Path); err != nil {
		t.Fatalf("second Attach: %v", err)
	}
	if after := taskWeb.MustRun(t, "ip", "-o", "link", "show"); after != before {
		t.Errorf("second Attach replaced the task's interfaces:\n%s\nwas\n%s", after, before)
	}
	// One that differs is replaced: the route was removed behind its back.
	taskWeb.MustRun(t, "ip", "route", "del", "default")
	if err := a.Attach(ctx, web, taskWeb.Path); err != nil {
		t.Fatalf("Attach after the route went: %v", err)
	}
	netnstest.Listen(t, taskWeb, ":80")

	t.Run("forwarding on in the node only", func(t *testing.T) {
		if got := strings.TrimSpace(node.MustRun(t, "cat", ipForwardPath)); got != "1" {
			t.Errorf("ip_forward in the node namespace = %q, want 1", got)
		}
		if now, _ := os.ReadFile(ipForwardPath); string(now) != string(hostForward) {
			t.Errorf("ip_forward of the test's own namespace changed from %q to %q", hostForward, now)
		}
	})
	t.Run("task interfaces", func(t *testing.T) {
		links := taskWeb.MustRun(t, "ip", "-o", "addr", "show")
		for _, want := range []string{"eth0    inet 10.250.0.10/24", "eth1    inet 10.251.0.10/24"} {
			if !strings.Contains(links, want) {
				t.Errorf("task addresses:\n%s\nwant a line with %q", links, want)
			}
		}
		if l := taskWeb.MustRun(t, "ip", "-o", "link", "show", "eth1"); !strings.Contains(l, "mtu 1450") || !strings.Contains(l, "02:42:0a:fb:00:0a") {
			t.Errorf("task eth1: %s; want mtu 1450 (underlay 1500 − 50) and MAC 02:42:0a:fb:00:0a", l)
		}
		if r := taskWeb.MustRun(t, "ip", "route", "show", "default"); !strings.Contains(r, "via "+kAppGW+" dev eth1") {
			t.Errorf("default route %q: want via the app gateway %s on eth1", r, kAppGW)
		}
	})
	t.Run("published port through the mesh", func(t *testing.T) {
		if err := netnstest.Dial(client, kDataAddr+":8080"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("VIP from another task, on any port", func(t *testing.T) {
		if err := netnstest.Dial(taskClient, kVIP+":80"); err != nil {
			t.Fatal(err)
		}
		if err := netnstest.Dial(taskClient, kVIP+":81"); err == nil {
			t.Error("VIP port 81: connected, but nothing listens there")
		}
		// The only backend calls its own service: hairpin.
		if err := netnstest.Dial(taskWeb, kVIP+":80"); err != nil {
			t.Errorf("backend to its own VIP: %v", err)
		}
	})
	t.Run("DNS", func(t *testing.T) {
		server := fmt.Sprintf("%s:%d", kAppGW, kDNSPort)
		for name, want := range map[string]string{
			"web":        "NOERROR " + kVIP,
			"tasks.web":  "NOERROR 10.251.0.10",
			"Tasks.Web.": "NOERROR 10.251.0.10",
		} {
			if got := dnsQuery(t, taskClient, server, name); got != want {
				t.Errorf("%s: %q, want %q", name, got, want)
			}
		}
		if got := dnsQuery(t, taskClient, server, "example.com"); !strings.HasPrefix(got, "SERVFAIL") {
			t.Errorf("example.com with no upstream: %q, want SERVFAIL (forwarded)", got)
		}
		path, err := a.ResolvConf(clientTask)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if want := "nameserver " + kAppGW + "\noptions ndots:0\n"; err != nil || string(b) != want {
			t.Errorf("%s: %q, %v; want %q", path, b, err, want)
		}
		if filepath.Base(path) != "c1.conf" {
			t.Errorf("resolv.conf path %s: want <state>/resolv/c1.conf", path)
		}
		if p, err := a.ResolvConf(&api.Task{Id: "bare"}); p != "" || err != nil {
			t.Errorf("ResolvConf of a task without networks: %q, %v; want \"\", nil", p, err)
		}
	})
	t.Run("unchanged view touches nothing", func(t *testing.T) {
		before := counter.count()
		if err := a.Apply(ctx, &api.NetworkDelta{Peers: delta.Peers}, false); err != nil {
			t.Fatal(err)
		}
		if err := a.Apply(ctx, kernelDelta(), true); err != nil {
			t.Fatal(err)
		}
		if n := counter.count() - before; n != 0 {
			t.Errorf("%d load balancer applies for an unchanged view", n)
		}
	})
	t.Run("backend leaves before Apply returns", func(t *testing.T) {
		stopped := copyEndpoint(delta.Endpoints[0])
		stopped.Serving = false
		if err := a.Apply(ctx, &api.NetworkDelta{Endpoints: []*api.NetworkEndpoint{stopped}}, false); err != nil {
			t.Fatal(err)
		}
		if err := netnstest.Dial(client, kDataAddr+":8080"); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("published port with no serving task: %v, want connection refused", err)
		}
	})
	t.Run("failed apply retries in the background", func(t *testing.T) {
		counter.mu.Lock()
		counter.failNext = true
		counter.mu.Unlock()
		before := counter.count()
		if err := a.Apply(ctx, &api.NetworkDelta{Endpoints: []*api.NetworkEndpoint{delta.Endpoints[0]}}, false); err == nil {
			t.Fatal("Apply with a failing load balancer: nil error")
		}
		deadline := time.Now().Add(10 * retryFirst)
		for counter.count() == before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if counter.count() == before {
			t.Fatal("no retry after a failed Apply")
		}
		if err := netnstest.Dial(client, kDataAddr+":8080"); err != nil {
			t.Errorf("after the retry: %v", err)
		}
	})

	t.Run("Detach and Close leave nothing", func(t *testing.T) {
		if err := a.Detach(ctx, web); err != nil {
			t.Fatal(err)
		}
		if err := a.Detach(ctx, web); err != nil {
			t.Errorf("second Detach: %v", err)
		}
		if l := taskWeb.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(l, "eth0") {
			t.Errorf("task interfaces after Detach:\n%s", l)
		}
		if err := a.Detach(ctx, clientTask); err != nil {
			t.Fatal(err)
		}
		if entries, _ := os.ReadDir(filepath.Join(a.cfg.StateDir, "resolv")); len(entries) != 0 {
			t.Errorf("resolv.conf files left after Detach: %v", entries)
		}
		if l := node.MustRun(t, "ip", "-o", "addr", "show", "dev", "lo"); !strings.Contains(l, kVIP+"/32") {
			t.Errorf("node loopback before Close:\n%s\nwant the VIP %s", l, kVIP)
		}
		if err := a.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if l := node.MustRun(t, "ip", "-o", "link", "show"); strings.Contains(l, "shb-") || strings.Contains(l, "shx-") || strings.Contains(l, "shv") {
			t.Errorf("node links after Close:\n%s", l)
		}
		if l := node.MustRun(t, "ip", "-o", "addr", "show", "dev", "lo"); strings.Contains(l, "shoalvip") {
			t.Errorf("VIPs left on the node's loopback after Close:\n%s", l)
		}
		ns, err := netns.GetFromPath(node.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer ns.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
		if err != nil {
			t.Fatal(err)
		}
		tables, err := c.ListTables()
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			t.Errorf("nftables table %s left after Close", tb.Name)
		}
		if err := a.Apply(ctx, kernelDelta(), true); err == nil {
			t.Error("Apply after Close: nil error")
		}
	})
}

func copyEndpoint(e *api.NetworkEndpoint) *api.NetworkEndpoint {
	return &api.NetworkEndpoint{TaskId: e.TaskId, NodeId: e.NodeId, ServiceId: e.ServiceId, Serving: e.Serving, Networks: e.Networks}
}

// testWriter sends the agent's log to the test's.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestNewRefusesBadBackend(t *testing.T) {
	_, err := New(Config{NodeID: "n1", StateDir: t.TempDir(), LBBackend: "iptables"})
	if err == nil || !strings.Contains(err.Error(), `"iptables"`) {
		t.Fatalf("New with backend iptables: %v, want an error naming it", err)
	}
}
