package lbtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// Addresses of the test topology. They exist only inside the namespaces a
// Topology creates.
var (
	// RouterBridgeAddr is the router's address on the backends' bridge.
	RouterBridgeAddr = netip.MustParseAddr("10.231.0.1")
	// RouterAddr is the router's address facing the client: the "node
	// address" published ports answer on.
	RouterAddr = netip.MustParseAddr("10.231.1.1")
	// ClientAddr is the client's address.
	ClientAddr = netip.MustParseAddr("10.231.1.2")
)

// BackendAddr is the address of backend i (0-based).
func BackendAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 231, 0, byte(10 + i)}) }

// helperEnv selects what a re-executed test binary does (see HelperProcess).
const helperEnv = "SHOAL_LBTEST_HELPER"

// requestTimeout bounds one request of the client helper; a request that gets
// no answer in that time is reported as "timeout", which tests treat as a
// failure, not as slowness.
const requestTimeout = 3 * time.Second

// readyTimeout bounds how long a helper server may take to start listening.
const readyTimeout = 30 * time.Second

var nsCounter atomic.Int64

// Topology is a router namespace with a bridge to n backend namespaces and a
// veth to a client namespace:
//
//	client 10.231.1.2 ── 10.231.1.1 router 10.231.0.1 ── bridge ── backend i 10.231.0.(10+i)
//
// The router forwards; backends and client route through it by default.
type Topology struct {
	Router   string // namespace names, for `ip netns exec`
	Client   string
	Backends []string
	// RouterNS is an open handle on the router namespace, for balancers.
	RouterNS netns.NsHandle
}

// RequireRoot skips the test unless it can create network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip) to build the test topology")
	}
}

// NewNetNS creates an empty named namespace with loopback up, deleted at
// cleanup.
func NewNetNS(t testing.TB) (string, netns.NsHandle) {
	t.Helper()
	name := fmt.Sprintf("shlb-%d-%d", os.Getpid(), nsCounter.Add(1))
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("delete namespace %s: %v: %s", name, err, out)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("open namespace %s: %v", name, err)
	}
	t.Cleanup(func() { h.Close() })
	return name, h
}

// NewTopology builds the router, n backends and the client.
func NewTopology(t testing.TB, n int) *Topology {
	t.Helper()
	RequireRoot(t)
	tp := &Topology{}
	tp.Router, tp.RouterNS = NewNetNS(t)
	r := tp.Router
	run(t, "ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "-n", r, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", r, "addr", "add", RouterBridgeAddr.String()+"/24", "dev", "br0")
	run(t, "ip", "-n", r, "link", "set", "br0", "up")
	for i := range n {
		b, _ := NewNetNS(t)
		tp.Backends = append(tp.Backends, b)
		veth := fmt.Sprintf("vb%d", i)
		run(t, "ip", "-n", r, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", b)
		run(t, "ip", "-n", r, "link", "set", veth, "master", "br0", "up")
		// Hairpin: with br_netfilter, a backend's connection DNATed back to
		// itself is bridged out of the port it came in on.
		run(t, "ip", "-n", r, "link", "set", veth, "type", "bridge_slave", "hairpin", "on")
		run(t, "ip", "-n", b, "addr", "add", BackendAddr(i).String()+"/24", "dev", "eth0")
		run(t, "ip", "-n", b, "link", "set", "eth0", "up")
		run(t, "ip", "-n", b, "route", "add", "default", "via", RouterBridgeAddr.String())
	}
	tp.Client, _ = NewNetNS(t)
	c := tp.Client
	run(t, "ip", "-n", r, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", c)
	run(t, "ip", "-n", r, "addr", "add", RouterAddr.String()+"/24", "dev", "vc")
	run(t, "ip", "-n", r, "link", "set", "vc", "up")
	run(t, "ip", "-n", c, "addr", "add", ClientAddr.String()+"/24", "dev", "eth0")
	run(t, "ip", "-n", c, "link", "set", "eth0", "up")
	run(t, "ip", "-n", c, "route", "add", "default", "via", RouterAddr.String())
	return tp
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// Serve starts an echo server in backend i listening on port for proto
// ("tcp" or "udp"). It answers every connection or datagram with
// "<backend name> <client address>". It stops at cleanup.
func (tp *Topology) Serve(t testing.TB, i int, proto string, port uint16) {
	t.Helper()
	ServeIn(t, tp.Backends[i], fmt.Sprintf("backend%d", i), proto, port)
}

// ServeIn starts an echo server in namespace ns, as Topology.Serve does for
// its backends, answering "<name> <client address>".
func ServeIn(t testing.TB, ns, name, proto string, port uint16) {
	t.Helper()
	cmd := helperCommand(ns, "serve", proto, strconv.Itoa(int(port)), name)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s server in %s: %v", proto, name, err)
	}
	t.Cleanup(func() {
		stdin.Close() // the helper exits when its stdin closes
		if err := cmd.Wait(); err != nil {
			t.Logf("%s %s server: %v", name, proto, err)
		}
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected first line %q", line)
		}
		ready <- err
		io.Copy(io.Discard, stdout)
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("%s %s server did not start: %v", name, proto, err)
		}
	case <-time.After(readyTimeout):
		t.Fatalf("%s %s server did not start within %s", name, proto, readyTimeout)
	}
}

// Reply is one answer a client got: the backend's name and the client
// address the backend saw, or Err ("refused", "timeout", or another error).
type Reply struct {
	Backend, Seen, Err string
}

// Request sends n requests (a new connection or socket each, so each is a
// new conntrack entry) from namespace ns to target and returns the replies.
func Request(t testing.TB, ns, proto string, target netip.AddrPort, n int) []Reply {
	t.Helper()
	return request1(t, ns, proto, target, n, 0)
}

// RequestFromPort sends n UDP requests from the same local port, so they
// share one conntrack entry, as a long-lived UDP client would.
func RequestFromPort(t testing.TB, ns string, target netip.AddrPort, localPort uint16, n int) []Reply {
	t.Helper()
	return request1(t, ns, "udp", target, n, localPort)
}

func request1(t testing.TB, ns, proto string, target netip.AddrPort, n int, localPort uint16) []Reply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(n+5)*requestTimeout)
	defer cancel()
	cmd := helperCommand(ns, "request", proto, target.String(), strconv.Itoa(n), strconv.Itoa(int(localPort)))
	cmd.Stderr = nil // captured in the ExitError instead
	out, err := runContext(ctx, cmd)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("client in %s: %v: %s", ns, err, ee.Stderr)
		}
		t.Fatalf("client in %s: %v", ns, err)
	}
	var replies []Reply
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "ok":
			replies = append(replies, Reply{Backend: f[1], Seen: f[2]})
		case len(f) >= 2 && f[0] == "err":
			replies = append(replies, Reply{Err: strings.Join(f[1:], " ")})
		default:
			replies = append(replies, Reply{Err: "malformed " + line})
		}
	}
	if len(replies) != n {
		t.Fatalf("client in %s: %d replies, want %d: %s", ns, len(replies), n, out)
	}
	return replies
}

// Count tallies replies by backend name, or by error.
func Count(replies []Reply) map[string]int {
	m := map[string]int{}
	for _, r := range replies {
		if r.Err != "" {
			m["error: "+r.Err]++
			continue
		}
		m[r.Backend]++
	}
	return m
}

// runContext runs cmd, killing it when ctx ends.
func runContext(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env = cmd.Env
	return c.Output()
}

func helperCommand(ns, mode string, args ...string) *exec.Cmd {
	self, err := os.Executable()
	if err != nil {
		self = os.Args[0]
	}
	a := append([]string{"netns", "exec", ns, self, "-test.run=^TestHelperProcess$", "--"}, args...)
	cmd := exec.Command("ip", a...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	cmd.Stderr = os.Stderr
	return cmd
}

// HelperProcess runs the server or client side of the traffic tests when the
// test binary is re-executed inside a namespace. Packages using Topology call
// it from a test named TestHelperProcess; it returns at once in a normal run.
func HelperProcess() {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	var err error
	switch mode {
	case "serve":
		err = serve(args)
	case "request":
		err = request(args)
	default:
		err = fmt.Errorf("unknown helper mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func serve(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("serve PROTO PORT NAME, got %q", args)
	}
	proto, port, name := args[0], args[1], args[2]
	addr := net.JoinHostPort("", port)
	switch proto {
	case "tcp":
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return err
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				remote := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				fmt.Fprintf(c, "%s %s\n", name, remote)
				c.Close()
			}
		}()
	case "udp":
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				remote := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
				pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, remote), from)
			}
		}()
	default:
		return fmt.Errorf("unknown protocol %q", proto)
	}
	fmt.Println("ready")
	// Serve until the parent closes stdin (or dies), so no server outlives
	// its test.
	io.Copy(io.Discard, os.Stdin)
	return nil
}

func request(args []string) error {
	if len(args) != 4 {
		return fmt.Errorf("request PROTO ADDR:PORT N LOCALPORT, got %q", args)
	}
	proto, target := args[0], args[1]
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	localPort, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	for range n {
		line, err := requestOnce(proto, target, localPort)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Println("err refused")
		case errors.Is(err, os.ErrDeadlineExceeded):
			fmt.Println("err timeout")
		case err != nil:
			fmt.Println("err", strings.ReplaceAll(err.Error(), "\n", " "))
		default:
			fmt.Println("ok", line)
		}
	}
	return nil
}

func requestOnce(proto, target string, localPort int) (string, error) {
	d := net.Dialer{Timeout: requestTimeout}
	if localPort != 0 {
		d.LocalAddr = &net.UDPAddr{Port: localPort}
	}
	c, err := d.Dial(proto, target)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(requestTimeout))
	if proto == "udp" {
		if _, err := c.Write([]byte("hello\n")); err != nil {
			return "", err
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// ExpectIPVSEnv names the environment variable a run on a known kernel sets
// to say whether it has IPVS: "1" (the VM tier) makes the tests that need
// IPVS fail instead of skipping, and the auto backend must pick IPVS; "0"
// says the kernel has none. Unset, tests go by what they find.
const ExpectIPVSEnv = "SHOAL_EXPECT_IPVS"

// ExpectIPVS returns what ExpectIPVSEnv says, and whether it says anything.
func ExpectIPVS() (want, set bool) {
	switch os.Getenv(ExpectIPVSEnv) {
	case "1":
		return true, true
	case "0":
		return false, true
	}
	return false, false
}

// RequireIPVS skips t (or fails it, where ExpectIPVSEnv=1) unless available
// says the kernel has IPVS. It also requires root, as RequireRoot does.
func RequireIPVS(t testing.TB, available bool) {
	t.Helper()
	RequireRoot(t)
	if available {
		return
	}
	if want, _ := ExpectIPVS(); want {
		t.Fatalf("the kernel has no IPVS (no generic netlink family IPVS), but %s=1 says it must", ExpectIPVSEnv)
	}
	t.Skipf("the kernel has no IPVS (no generic netlink family IPVS; modprobe ip_vs): run this test binary on a kernel with IPVS, e.g. in the VM tier with %s=1", ExpectIPVSEnv)
}
