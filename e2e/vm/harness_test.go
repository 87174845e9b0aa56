package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/network"
)

// The cluster the tier brings up, and where it lives. The Vagrantfile
// numbers addresses on the private network the same way: managers .11,
// .12 ..., workers .21, .22 ...
const (
	netnsName  = "shoal-vm"
	privateNet = "192.168.56"
	managers   = 1
	workers    = 2
	// vmCache holds the box (per version of build-box.sh) and Vagrant's
	// home: made once per machine, reused by every run.
	vmCache = "/var/cache/shoal/vm"
	// workDir holds a run's files: Vagrant's state, ssh config, logs.
	workDir = "/var/tmp/shoal-vm-test"
	// lockPath keeps two runs of the tier (which share the namespace's
	// name) from running at once.
	lockPath = "/run/lock/shoal-vm.lock"
)

// Bounds of the waits. Emulated VMs (no KVM) on a busy machine are slow:
// these are far above what was measured, and never part of what a test
// asserts.
const (
	// upTimeout bounds `vagrant up` of the three VMs (2-5 minutes seen).
	upTimeout = 20 * time.Minute
	// destroyTimeout bounds tearing the cluster down.
	destroyTimeout = 5 * time.Minute
	// teardownReserve is kept from go test's -timeout for the teardown, so
	// that a run out of time still destroys its VMs.
	teardownReserve = 4 * time.Minute
	// commandTimeout bounds one command on a VM.
	commandTimeout = 3 * time.Minute
	// readyTimeout bounds waiting for every node to be Ready.
	readyTimeout = 3 * time.Minute
	// requestTimeout bounds one request to a VM.
	requestTimeout = 10 * time.Second
	// heartbeatGrace is the managers' --heartbeat-grace in the VMs.
	heartbeatGrace = 10 * time.Second
)

// Node is one VM of the cluster.
type Node struct {
	// Name is the VM's name in the Vagrantfile and its hostname: manager1,
	// worker1 ...
	Name string
	// Manager says whether it joined as a manager.
	Manager bool
	// Addr is its address on the private network: shoald advertises it,
	// published ports answer on it. It exists only inside the namespace.
	Addr string
}

// Cluster is the VM cluster every test of the package shares. Its methods
// may be called from parallel tests, except SetLBBackend.
type Cluster struct {
	// Nodes are the VMs, managers first.
	Nodes []Node
	// Box is the Vagrant box the VMs run.
	Box string
	// LBBackend is shoald's --lb-backend on every VM: $SHOAL_VM_LB_BACKEND
	// (default auto) at first, then what SetLBBackend set.
	LBBackend string

	root      string // the shoal checkout
	work      string // this run's files: Vagrant's dotfile dir, ssh config, logs
	bin       string // shoald, shoalctl, shoal-testimage built for this run
	sshConfig string
	env       []string // Vagrant's environment
	lock      *os.File
	reuse     bool // the VMs are up already, kept by an earlier run
}

var (
	// rootCtx ends when the run is interrupted or close to go test's
	// -timeout; every command of the harness runs under it.
	rootCtx    context.Context = context.Background()
	skipReason string

	// The environment (namespace, libvirtd, box) and the cluster are made
	// by the first test that needs them, once, and torn down by TestMain.
	envOnce sync.Once
	envC    *Cluster
	envErr  error
	upOnce  sync.Once
	upErr   error
)

// vmCluster returns the shared cluster, bringing it up on first use, or
// skips or fails the test when the tier cannot run or the cluster did not
// come up.
func vmCluster(t testing.TB) *Cluster {
	t.Helper()
	c := vmEnv(t)
	upOnce.Do(func() { upErr = c.up(rootCtx) })
	if upErr != nil {
		t.Fatalf("the VM cluster did not come up: %v", upErr)
	}
	return c
}

// vmEnv returns the tier's environment (packages, box, namespace,
// libvirtd) for tests that run Vagrant themselves, whether or not the
// cluster is up.
func vmEnv(t testing.TB) *Cluster {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	envOnce.Do(func() { envC, envErr = newEnv(rootCtx) })
	if envErr != nil {
		t.Fatalf("the VM tier's environment is not there: %v", envErr)
	}
	return envC
}

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTier(m))
}

func runTier(m *testing.M) int {
	switch {
	case testing.Short():
		skipReason = "the VM tier does not run with -short"
	case os.Geteuid() != 0:
		skipReason = "the VM tier needs root (libvirtd, network namespaces)"
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if d, ok := testDeadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, d.Add(-teardownReserve))
		defer cancel()
	}
	rootCtx = ctx
	code := m.Run()
	if envC != nil {
		if os.Getenv("SHOAL_VM_KEEP") != "" {
			logf("SHOAL_VM_KEEP is set: the cluster stays up (`ip netns exec %s ssh -F %s manager1`); remove it with `make vm-demo-down`", netnsName, envC.sshConfig)
		} else {
			envC.teardown()
		}
		envC.lock.Close()
	}
	return code
}

// testDeadline is when go test's -timeout will end the run.
func testDeadline() (time.Time, bool) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return time.Time{}, false
	}
	d, err := time.ParseDuration(f.Value.String())
	if err != nil || d <= 0 {
		return time.Time{}, false
	}
	return start.Add(d), true
}

var start = time.Now()

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vm [%5.0fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
}

// newEnv makes everything but the VMs: packages, binaries, the box, the
// namespace with its libvirtd (after removing what a crashed run left).
func newEnv(ctx context.Context) (*Cluster, error) {
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		return nil, fmt.Errorf("another run of the VM tier holds %s", lockPath)
	}
	c, err := newCluster()
	if err != nil {
		lock.Close()
		return nil, err
	}
	c.lock = lock
	if err := c.prepare(ctx); err != nil {
		// What prepare made (the namespace, libvirtd) goes with the
		// teardown at the end.
		return c, err
	}
	return c, nil
}

func newCluster() (*Cluster, error) {
	root, err := filepath.Abs("../..")
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(root, "deploy/vagrant/Vagrantfile")); err != nil {
		return nil, fmt.Errorf("not in a shoal checkout: %w", err)
	}
	work := workDir
	c := &Cluster{root: root, work: work, bin: filepath.Join(work, "bin"), sshConfig: filepath.Join(work, "ssh_config"), LBBackend: "auto"}
	// A cluster an earlier run kept (SHOAL_VM_KEEP) is used again when
	// this run keeps it too: a developer's loop without a boot each time.
	_, errConfig := os.Stat(c.sshConfig)
	_, errNS := os.Stat("/run/netns/" + netnsName)
	c.reuse = os.Getenv("SHOAL_VM_KEEP") != "" && errConfig == nil && errNS == nil
	if !c.reuse {
		// One place, not a temporary name: what a killed run left there
		// is removed by the next.
		if err := os.RemoveAll(workDir); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return nil, err
	}
	if b := os.Getenv("SHOAL_VM_LB_BACKEND"); b != "" {
		c.LBBackend = b
	}
	for i := 1; i <= managers; i++ {
		c.Nodes = append(c.Nodes, Node{Name: fmt.Sprintf("manager%d", i), Manager: true, Addr: fmt.Sprintf("%s.%d", privateNet, 10+i)})
	}
	for i := 1; i <= workers; i++ {
		c.Nodes = append(c.Nodes, Node{Name: fmt.Sprintf("worker%d", i), Addr: fmt.Sprintf("%s.%d", privateNet, 20+i)})
	}
	return c, nil
}

func (c *Cluster) prepare(ctx context.Context) error {
	step := func(what string, fn func() error) error {
		t0 := time.Now()
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		logf("%s: %.1f s", what, time.Since(t0).Seconds())
		return nil
	}
	if err := step("packages (deploy/setup-vm.sh)", func() error {
		_, err := c.host(ctx, nil, "sh", "deploy/setup-vm.sh")
		return err
	}); err != nil {
		return err
	}
	if err := step("build shoald, shoalctl, shoal-testimage", func() error {
		// Stripped: the binaries travel into every VM over ssh.
		_, err := c.host(ctx, nil, "go", "build", "-ldflags=-s -w", "-o", c.bin+"/", "./cmd/shoald", "./cmd/shoalctl", "./cmd/shoal-testimage")
		return err
	}); err != nil {
		return err
	}
	c.env = append(os.Environ(),
		"VAGRANT_HOME="+filepath.Join(vmCache, "vagrant.d"),
		"VAGRANT_DOTFILE_PATH="+filepath.Join(c.work, "vagrant"),
		"VAGRANT_CWD="+filepath.Join(c.root, "deploy/vagrant"),
		"VAGRANT_DEFAULT_PROVIDER=libvirt",
		"VAGRANT_CHECKPOINT_DISABLE=1",
		"VAGRANT_BOX_UPDATE_CHECK_DISABLE=1",
		"VAGRANT_NO_COLOR=1",
		"SHOAL_VM_CACHE="+vmCache,
		"SHOAL_VM_NETNS="+netnsName,
		"SHOAL_BIN="+c.bin,
		"SHOAL_NET="+privateNet,
		fmt.Sprintf("SHOAL_MANAGERS=%d", managers),
		fmt.Sprintf("SHOAL_WORKERS=%d", workers),
		"SHOAL_LB_BACKEND="+c.LBBackend,
		// Emulated VMs on a busy host stall for seconds at times: a node
		// is not declared down for that (the default grace is 2.25 s).
		"SHOAL_SHOALD_OPTS=--heartbeat-grace "+heartbeatGrace.String(),
	)
	if err := step("box (deploy/vagrant/box/build-box.sh)", func() error {
		out, err := c.host(ctx, c.env, "sh", "deploy/vagrant/box/build-box.sh")
		if err != nil {
			return err
		}
		c.Box = strings.TrimSpace(lastLine(out))
		c.env = append(c.env, "SHOAL_BOX="+c.Box)
		return nil
	}); err != nil {
		return err
	}
	if c.reuse {
		logf("reusing the cluster an earlier run kept (SHOAL_VM_KEEP)")
		return nil
	}
	return step("namespace "+netnsName+" and libvirtd (deploy/vagrant/vmenv.sh up)", func() error {
		_, err := c.host(ctx, c.env, "sh", "deploy/vagrant/vmenv.sh", "up")
		return err
	})
}

// up boots the cluster and waits until every node is Ready.
func (c *Cluster) up(ctx context.Context) error {
	t0 := time.Now()
	uctx, cancel := context.WithTimeout(ctx, upTimeout)
	defer cancel()
	logf("vagrant up --parallel (%d managers, %d workers, box %s, --lb-backend %s): log in %s", managers, workers, c.Box, c.LBBackend, c.upLog())
	if _, err := c.Vagrant(uctx, nil, c.upLog(), "up", "--parallel"); err != nil {
		return fmt.Errorf("vagrant up: %w\n%s", err, tailFile(c.upLog(), 60))
	}
	logf("vagrant up: %.1f s", time.Since(t0).Seconds())
	if c.reuse {
		if err := c.provision(uctx); err != nil {
			return err
		}
	}
	out, err := c.Vagrant(ctx, nil, "", "ssh-config")
	if err != nil {
		return fmt.Errorf("vagrant ssh-config: %w", err)
	}
	if err := c.writeSSHConfig(out); err != nil {
		return err
	}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.ns(ctx, "ssh", "-F", c.sshConfig, "-O", "check", n.Name).Run() == nil {
				return
			}
			// The shared connection, in the background (-f), its output
			// nowhere: commands reuse it.
			if err := c.ns(ctx, "ssh", "-F", c.sshConfig, "-M", "-N", "-f", n.Name).Run(); err != nil {
				errs[i] = fmt.Errorf("ssh to %s: %w", n.Name, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	t1 := time.Now()
	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := c.WaitReady(rctx); err != nil {
		return err
	}
	logf("every node Ready %.1f s after vagrant up; cluster up in %.1f s", time.Since(t1).Seconds(), time.Since(t0).Seconds())
	return nil
}

func (c *Cluster) upLog() string { return filepath.Join(c.work, "vagrant-up.log") }

// provision brings new binaries and settings into running VMs: `vagrant
// provision` of every VM at once (`vagrant up --provision` of running
// VMs provisions each twice with vagrant-libvirt 0.11).
func (c *Cluster) provision(ctx context.Context) error {
	t0 := time.Now()
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			log := filepath.Join(c.work, "vagrant-provision-"+n.Name+".log")
			if _, err := c.Vagrant(ctx, nil, log, "provision", n.Name); err != nil {
				errs[i] = fmt.Errorf("%w\n%s", err, tailFile(log, 30))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	logf("vagrant provision: %.1f s", time.Since(t0).Seconds())
	return nil
}

// writeSSHConfig keeps what `vagrant ssh-config` says (taken once: every
// `vagrant ssh` costs seconds) and adds one shared connection per VM, so a
// command costs a round trip instead of a handshake.
func (c *Cluster) writeSSHConfig(vagrantConfig string) error {
	var b strings.Builder
	b.WriteString("Host *\n")
	fmt.Fprintf(&b, "  ControlMaster auto\n  ControlPath %s/ssh-%%n\n", c.work)
	// Fast key exchange: the post-quantum default costs the emulated
	// side most of a second.
	b.WriteString("  KexAlgorithms curve25519-sha256\n  ConnectTimeout 20\n  ServerAliveInterval 10\n\n")
	b.WriteString(vagrantConfig)
	return os.WriteFile(c.sshConfig, []byte(b.String()), 0o600)
}

// teardown destroys the VMs and everything the tier made on the host.
func (c *Cluster) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), destroyTimeout)
	defer cancel()
	t0 := time.Now()
	for _, n := range c.Nodes {
		// The shared connections run in the namespace; closing them first
		// lets vagrant destroy and the namespace go without waiting.
		_ = c.ns(ctx, "ssh", "-F", c.sshConfig, "-O", "exit", n.Name).Run()
	}
	if c.Box != "" {
		if _, err := c.Vagrant(ctx, nil, "", "destroy", "-f"); err != nil {
			logf("vagrant destroy: %v (vmenv.sh down removes the VMs anyway)", err)
		}
	}
	if _, err := c.host(ctx, c.env, "sh", "deploy/vagrant/vmenv.sh", "down"); err != nil {
		logf("teardown: %v", err)
	}
	if err := os.RemoveAll(c.work); err != nil {
		logf("teardown: %v", err)
	}
	logf("teardown: %.1f s", time.Since(t0).Seconds())
}

// host runs a command of the checkout on the host, in the checkout's root.
func (c *Cluster) host(ctx context.Context, env []string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = c.root
	cmd.Env = env
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, tail(stderr.String()+out.String(), 40))
	}
	return out.String(), nil
}

// ns is a command run inside the VMs' namespace.
func (c *Cluster) ns(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netnsName, name}, args...)...)
	cmd.Env = c.env
	return cmd
}

// Vagrant runs vagrant in the namespace with the cluster's settings, plus
// env (later entries win). With a log path, the output goes there (and
// is not returned). Interrupted, vagrant gets SIGINT and time to clean up.
func (c *Cluster) Vagrant(ctx context.Context, env []string, log string, args ...string) (string, error) {
	cmd := c.ns(ctx, "vagrant", args...)
	cmd.Env = append(slices.Clone(c.env), env...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	var out bytes.Buffer
	if log != "" {
		f, err := os.Create(log)
		if err != nil {
			return "", err
		}
		defer f.Close()
		w := &stampWriter{w: f, start: time.Now(), lineStart: true}
		cmd.Stdout, cmd.Stderr = w, w
	} else {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("vagrant %s: %w\n%s", strings.Join(args, " "), err, tail(out.String(), 30))
	}
	return out.String(), nil
}

// Run runs a shell command line on a VM (as the vagrant user: prefix sudo
// for root) and returns its stdout. The error carries stderr.
func (c *Cluster) Run(ctx context.Context, node, command string) (string, error) {
	return c.runIn(ctx, node, command, nil)
}

func (c *Cluster) runIn(ctx context.Context, node, command string, stdin io.Reader) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	cmd := c.ns(ctx, "ssh", "-F", c.sshConfig, node, "--", command)
	cmd.Stdin = stdin
	var out, stderr bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &stderr
	// The shared connection's master outlives this command: do not wait
	// for the pipes it inherited.
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil && !(errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success()) {
		return out.String(), fmt.Errorf("%s: %s: %w: %s", node, command, err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

// MustRun is Run for a test: it fails the test on error.
func (c *Cluster) MustRun(t testing.TB, node, command string) string {
	t.Helper()
	out, err := c.Run(testContext(t), node, command)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// CopyFile copies a host file to path on a VM (written as the vagrant
// user, so somewhere it may write, like /tmp).
func (c *Cluster) CopyFile(ctx context.Context, node, local, path string) error {
	f, err := os.Open(local)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = c.runIn(ctx, node, "cat > "+shellQuote(path), f)
	return err
}

// Shoalctl runs `sudo shoalctl ARGS` on the first manager.
func (c *Cluster) Shoalctl(ctx context.Context, args ...string) (string, error) {
	return c.Run(ctx, c.Nodes[0].Name, "sudo shoalctl "+shellQuote(args...))
}

// NodeList is `shoalctl node ls` as the API's nodes.
func (c *Cluster) NodeList(ctx context.Context) ([]*api.Node, error) {
	out, err := c.Shoalctl(ctx, "node", "ls", "--format", "json")
	if err != nil {
		return nil, err
	}
	var nodes []*api.Node
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		n := &api.Node{}
		if err := protojson.Unmarshal(sc.Bytes(), n); err != nil {
			return nil, fmt.Errorf("node ls --format json: %w: %s", err, sc.Text())
		}
		nodes = append(nodes, n)
	}
	return nodes, sc.Err()
}

// WaitReady waits until every VM is a Ready node of the cluster.
func (c *Cluster) WaitReady(ctx context.Context) error {
	last := ""
	for {
		nodes, err := c.NodeList(ctx)
		ready := map[string]bool{}
		for _, n := range nodes {
			ready[n.GetDescription().GetHostname()] = n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY
		}
		var missing []string
		for _, n := range c.Nodes {
			if !ready[n.Name] {
				missing = append(missing, n.Name)
			}
		}
		switch {
		case err != nil:
			last = err.Error()
		case len(missing) == 0:
			return nil
		default:
			last = "not Ready: " + strings.Join(missing, ", ")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for every node to be Ready: %w; last: %s", ctx.Err(), last)
		case <-time.After(time.Second):
		}
	}
}

// lbLine is shoald's log line naming its load balancer.
var lbLine = regexp.MustCompile(`msg="load balancer".* backend=(\S+)`)

// NodeLBBackend is the load balancer the node's running shoald chose, from its
// log since it last started.
func (c *Cluster) NodeLBBackend(ctx context.Context, node string) (string, error) {
	out, err := c.Run(ctx, node, `sudo journalctl -u shoald -o cat --no-pager _SYSTEMD_INVOCATION_ID="$(systemctl show -p InvocationID --value shoald)"`)
	if err != nil {
		return "", err
	}
	backend := ""
	for _, m := range lbLine.FindAllStringSubmatch(out, -1) {
		backend = m[1]
	}
	if backend == "" {
		return "", fmt.Errorf("%s: shoald has not logged its load balancer yet", node)
	}
	return backend, nil
}

// SetLBBackend restarts shoald on every VM with --lb-backend backend
// (auto, ipvs or nftables), waits until each logged that backend and every
// node is Ready again. Containers keep running across the restart. It does
// not clear what the previous backend left in the kernel. Tests that call
// it must not run in parallel with others, and should set the backend back
// when they are done (t.Cleanup).
func (c *Cluster) SetLBBackend(ctx context.Context, backend string) error {
	var wg sync.WaitGroup
	errs := make([]error, len(c.Nodes))
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Run(ctx, n.Name, fmt.Sprintf(`sudo sed -i 's/^SHOALD_LB_BACKEND=.*/SHOALD_LB_BACKEND=%s/' /etc/default/shoald && sudo systemctl restart shoald`, backend))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.LBBackend = backend
	want := backend
	for _, n := range c.Nodes {
		for {
			got, err := c.NodeLBBackend(ctx, n.Name)
			if err == nil && (got == want || want == "auto") {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: shoald with --lb-backend %s: %v (logged %q)", n.Name, backend, ctx.Err(), got)
			case <-time.After(time.Second):
			}
		}
	}
	return c.WaitReady(ctx)
}

// Journal is the tail of shoald's log on a VM, for failure messages.
func (c *Cluster) Journal(ctx context.Context, node string, lines int) string {
	out, err := c.Run(ctx, node, fmt.Sprintf("sudo journalctl -u shoald -o short-precise --no-pager -n %d", lines))
	if err != nil {
		return err.Error()
	}
	return out
}

// InNetNS runs fn on a thread inside the VMs' namespace: sockets fn opens
// reach the VMs' addresses. Goroutines fn starts run outside it.
func (c *Cluster) InNetNS(fn func() error) error {
	return network.InNetNS("/run/netns/"+netnsName, fn)
}

// Dial connects from inside the VMs' namespace ("tcp" or "udp").
func (c *Cluster) Dial(ctx context.Context, netw, addr string) (net.Conn, error) {
	var conn net.Conn
	err := c.InNetNS(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, netw, addr)
		return err
	})
	return conn, err
}

// HTTPClient makes its connections from inside the VMs' namespace, a new
// one for every request (so the routing mesh balances each).
func (c *Cluster) HTTPClient() *http.Client {
	return &http.Client{
		Timeout:   requestTimeout,
		Transport: &http.Transport{DialContext: c.Dial, DisableKeepAlives: true},
	}
}

// Get fetches url from inside the namespace and returns the body; a status
// other than 200 is an error.
func (c *Cluster) Get(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.HTTPClient().Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(body), nil
}

// UDPExchange sends one datagram to addr from inside the namespace and
// returns the reply.
func (c *Cluster) UDPExchange(ctx context.Context, addr, message string) (string, error) {
	conn, err := c.Dial(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(requestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(message)); err != nil {
		return "", err
	}
	buf := make([]byte, 64*1024)
	n, err := conn.Read(buf)
	if err != nil {
		return "", fmt.Errorf("udp %s: %w", addr, err)
	}
	return string(buf[:n]), nil
}

// TCPExchange connects to addr from inside the namespace, sends message,
// closes its side and returns everything the server sent until it closed
// (the echo image's TCP port answers "hostname=NAME\n" and the message).
func (c *Cluster) TCPExchange(ctx context.Context, addr, message string) (string, error) {
	conn, err := c.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(requestTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, message); err != nil {
		return "", err
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	reply, err := io.ReadAll(conn)
	if err != nil {
		return string(reply), fmt.Errorf("tcp %s: %w", addr, err)
	}
	return string(reply), nil
}

// Load runs `shoal-testimage load` from inside the namespace: many short
// requests at target (http://ADDR:PORT/ or udp://ADDR:PORT), reported per
// answering task.
func (c *Cluster) Load(ctx context.Context, cfg testimage.LoadConfig) (testimage.LoadReport, error) {
	var rep testimage.LoadReport
	args := []string{"load", "-n", fmt.Sprint(cfg.Requests), "-c", fmt.Sprint(max(cfg.Concurrency, 1))}
	if cfg.Timeout > 0 {
		args = append(args, "-timeout", cfg.Timeout.String())
	}
	cmd := c.ns(ctx, filepath.Join(c.bin, "shoal-testimage"), append(args, cfg.Target)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return rep, fmt.Errorf("shoal-testimage load %s: %w: %s", cfg.Target, err, stderr.String())
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return rep, fmt.Errorf("shoal-testimage load %s: %w: %s", cfg.Target, err, out)
	}
	return rep, nil
}

// EchoImage builds the echo test image on the host and loads it into the
// cluster (`shoalctl image load` on the first manager), once per run.
func (c *Cluster) EchoImage(ctx context.Context) (string, error) {
	echoOnce.Do(func() {
		tarball := filepath.Join(c.work, "echo.tar")
		if echoErr = testimage.BuildEcho(ctx, tarball, testimage.EchoRef); echoErr != nil {
			return
		}
		if echoErr = c.CopyFile(ctx, c.Nodes[0].Name, tarball, "/tmp/echo.tar"); echoErr != nil {
			return
		}
		_, echoErr = c.Shoalctl(ctx, "image", "load", "/tmp/echo.tar")
	})
	return testimage.EchoRef, echoErr
}

var (
	echoOnce sync.Once
	echoErr  error
)

// eventually polls cond (every second) until it holds or the timeout
// passes, then fails the test with the last state cond reported.
func eventually(t testing.TB, timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testContext(t), timeout)
	defer cancel()
	last := ""
	for {
		ok, state := cond(ctx)
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v; last: %s", what, timeout, last)
		case <-time.After(time.Second):
		}
	}
}

// testContext ends with the test and with the run.
func testContext(t testing.TB) context.Context {
	ctx, cancel := context.WithCancel(t.Context())
	stop := context.AfterFunc(rootCtx, cancel)
	t.Cleanup(func() { stop(); cancel() })
	return ctx
}

// shellQuote quotes words for a POSIX shell.
func shellQuote(words ...string) string {
	quoted := make([]string, len(words))
	for i, w := range words {
		if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+:,./@") == "" {
			quoted[i] = w
			continue
		}
		quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stampWriter starts every line with the seconds since start, to see in a
// log where the time went. Vagrant's progress lines (ended by carriage
// returns) become lines of their own.
type stampWriter struct {
	w         io.Writer
	start     time.Time
	lineStart bool
}

func (s *stampWriter) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, ch := range p {
		if s.lineStart {
			fmt.Fprintf(&b, "[%6.1f] ", time.Since(s.start).Seconds())
			s.lineStart = false
		}
		if ch == '\r' {
			ch = '\n'
		}
		b.WriteByte(ch)
		s.lineStart = ch == '\n'
	}
	if _, err := s.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(string(b), n)
}
