package testcluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/testimage"
	wexec "github.com/shoal-project/shoal/worker/exec"
)

// ContainerdAddress is the host's containerd, shared by all test nodes.
const ContainerdAddress = "/run/containerd/containerd.sock"

// NamespacePrefix starts the containerd namespace of every test node, so
// that a leak check can find what a test left behind.
const NamespacePrefix = "shoal-e2e-"

// Skip skips t unless the machine can run real nodes: root and containerd.
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containers")
	}
	if _, err := os.Stat(ContainerdAddress); err != nil {
		t.Skipf("needs containerd at %s (run `make setup`)", ContainerdAddress)
	}
}

var binaries struct {
	once sync.Once
	dir  string
	err  error
}

// Binaries builds shoald and shoalctl once per test process and returns
// their directory.
func Binaries(t testing.TB) string {
	t.Helper()
	binaries.once.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-e2e-bin-")
		if err != nil {
			binaries.err = err
			return
		}
		root, err := moduleRoot()
		if err != nil {
			binaries.err = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/shoald", "./cmd/shoalctl", "./cmd/shoal-testimage")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binaries.err = fmt.Errorf("build binaries: %v\n%s", err, out)
			return
		}
		binaries.dir = dir
	})
	if binaries.err != nil {
		t.Fatal(binaries.err)
	}
	return binaries.dir
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the shoal module")
	}
	return filepath.Dir(mod), nil
}

// freePort finds a loopback TCP port nobody listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomSuffix() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Node is one shoald process.
type Node struct {
	t         testing.TB
	Name      string
	DataDir   string
	Socket    string
	Namespace string
	bin       string
	args      []string
	// logPath is shoald's output, beside the data dir unless the data
	// dir was moved (WithDataDir): a full data dir must not eat it.
	logPath string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// Image is the echo image's reference, loaded into every node's namespace.
const Image = testimage.EchoRef

// Option changes a node before it first starts.
type Option func(*Node)

// WithDataDir puts the node's data dir at dir (for instance on a small
// file system the test mounted).
func WithDataDir(dir string) Option { return func(n *Node) { n.DataDir = dir } }

// WithArgs adds shoald flags.
func WithArgs(args ...string) Option { return func(n *Node) { n.args = append(n.args, args...) } }

// NewSingle starts a one-node cluster (`shoald init`) and registers its
// clean-up with t.
func NewSingle(t testing.TB, opts ...Option) *Node {
	t.Helper()
	Skip(t)
	bin := Binaries(t)
	dir := t.TempDir()
	id := randomSuffix()
	n := &Node{
		t: t, Name: "node1", bin: bin,
		DataDir:   filepath.Join(dir, "data"),
		Socket:    filepath.Join(dir, "shoald.sock"),
		Namespace: NamespacePrefix + id,
	}
	n.logPath = filepath.Join(dir, "shoald.log")
	var extra Node
	for _, o := range opts {
		o(&extra)
	}
	if extra.DataDir != "" {
		n.DataDir = extra.DataDir
	}
	n.args = []string{"--data-dir", n.DataDir, "--socket", n.Socket, "--containerd-namespace", n.Namespace, "--hostname", n.Name, "--log-level", "debug",
		"--listen-addr", "127.0.0.1:" + strconv.Itoa(freePort(t))}
	n.args = append(n.args, extra.args...)
	// The node runs in a network namespace of its own, named like its
	// containerd namespace: the overlay devices and nft tables its
	// network agent makes (and keeps after shoald stops, as on a real
	// host) go with the namespace at clean-up.
	if out, err := exec.Command("ip", "netns", "add", n.Namespace).CombinedOutput(); err != nil {
		t.Fatalf("create network namespace %s: %v %s", n.Namespace, err, out)
	}
	t.Cleanup(n.cleanup)
	if out, err := exec.Command("ip", "-n", n.Namespace, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("set lo up in %s: %v %s", n.Namespace, err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := testimage.LoadEcho(ctx, ContainerdAddress, n.Namespace); err != nil {
		t.Fatalf("load echo image: %v", err)
	}
	n.Start("init")
	return n
}

// Start runs `shoald <verb>` (init or run) and waits until its API answers.
func (n *Node) Start(verb string) {
	n.t.Helper()
	done := n.StartNoWait(verb)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := n.Try("node", "ls", "-q"); err == nil {
			return
		}
		select {
		case <-done:
			n.t.Fatalf("%s: shoald %s exited early:\n%s", n.Name, verb, n.Log())
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s: shoald did not answer within 30s:\n%s", n.Name, n.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StartNoWait runs `shoald <verb>` and returns at once (a locked manager
// never answers the API); the channel closes when shoald exits.
func (n *Node) StartNoWait(verb string) <-chan struct{} {
	n.t.Helper()
	n.mu.Lock()
	if n.cmd != nil {
		n.mu.Unlock()
		n.t.Fatalf("%s: shoald already running", n.Name)
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.mu.Unlock()
		n.t.Fatal(err)
	}
	cmd := n.inNetns(append([]string{filepath.Join(n.bin, "shoald"), verb}, n.args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Pdeathsig: a crashed test binary must not leave daemons running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.mu.Unlock()
		n.t.Fatalf("start shoald: %v", err)
	}
	n.cmd, n.log, n.done = cmd, logf, make(chan struct{})
	done := n.done
	go func() {
		cmd.Wait()
		close(done)
	}()
	n.mu.Unlock()
	return done
}

// Kill stops shoald with SIGKILL, as a crash would; containers stay.
func (n *Node) Kill() { n.stop(syscall.SIGKILL) }

// Stop stops shoald with SIGTERM.
func (n *Node) Stop() { n.stop(syscall.SIGTERM) }

func (n *Node) stop(sig syscall.Signal) {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	n.log.Close()
}

// PID is shoald's process id, or 0 when it is not running.
func (n *Node) PID() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Client returns a Control API client on the node's socket.
func (n *Node) Client() api.ControlClient {
	n.t.Helper()
	conn, err := grpc.NewClient("unix://"+n.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { conn.Close() })
	return api.NewControlClient(conn)
}

// Log returns shoald's output so far.
func (n *Node) Log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

// Try runs shoalctl against the node and returns its output.
func (n *Node) Try(args ...string) (string, error) {
	return n.TryCtx(context.Background(), args...)
}

// TryCtx is Try with a context.
func (n *Node) TryCtx(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(n.bin, "shoalctl"), append([]string{"--socket", n.Socket}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// Ctl runs shoalctl and fails the test if it fails.
func (n *Node) Ctl(args ...string) string {
	n.t.Helper()
	out, err := n.Try(args...)
	if err != nil {
		n.t.Fatalf("shoalctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// Shoald runs a shoald subcommand to completion with this node's flags
// (for commands expected to fail fast, like a second init).
func (n *Node) Shoald(args ...string) (string, error) {
	cmd := n.inNetns(append(append([]string{filepath.Join(n.bin, "shoald")}, args...), n.args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// inNetns is a command that runs argv in the node's network namespace;
// `ip netns exec` execs it, so the process is argv[0] itself.
func (n *Node) inNetns(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Namespace}, argv...)...)
}

// Tasks returns a service's tasks as the API reports them.
func (n *Node) Tasks(service string) []*api.Task {
	n.t.Helper()
	out := n.Ctl("service", "ps", service, "--format", "json")
	var tasks []*api.Task
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		t := &api.Task{}
		if err := protojsonUnmarshal([]byte(line), t); err != nil {
			n.t.Fatalf("decode task: %v\n%s", err, line)
		}
		tasks = append(tasks, t)
	}
	return tasks
}

// Container is a container of the node's namespace as containerd sees it.
type Container struct {
	ID     string
	TaskID string
	Slot   string
	PID    uint32
	Status string
}

// Containers lists the node's containers straight from containerd.
func (n *Node) Containers() []Container {
	n.t.Helper()
	cs, err := listContainers(n.Namespace)
	if err != nil {
		n.t.Fatal(err)
	}
	return cs
}

func withClient(namespace string, fn func(ctx context.Context, c *containerd.Client) error) error {
	c, err := containerd.New(ContainerdAddress)
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return fn(namespaces.WithNamespace(ctx, namespace), c)
}

func listContainers(namespace string) ([]Container, error) {
	var out []Container
	err := withClient(namespace, func(ctx context.Context, c *containerd.Client) error {
		cs, err := c.Containers(ctx)
		if err != nil {
			return err
		}
		for _, ctr := range cs {
			labels, err := ctr.Labels(ctx)
			if err != nil {
				continue
			}
			info := Container{ID: ctr.ID(), TaskID: labels[wexec.LabelTask], Slot: labels[wexec.LabelSlot], Status: "created"}
			if task, err := ctr.Task(ctx, nil); err == nil {
				info.PID = task.Pid()
				if st, err := task.Status(ctx); err == nil {
					info.Status = string(st.Status)
				}
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// Snapshots counts the snapshots left in the node's namespace.
func (n *Node) Snapshots() int {
	n.t.Helper()
	count := 0
	err := withClient(n.Namespace, func(ctx context.Context, c *containerd.Client) error {
		return c.SnapshotService("").Walk(ctx, func(ctx context.Context, info snapshotInfo) error {
			if info.Kind == snapshotActive {
				count++
			}
			return nil
		})
	})
	if err != nil {
		n.t.Fatal(err)
	}
	return count
}

// Eventually polls cond until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v; last state:\n%s", what, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanup stops shoald, removes every container, snapshot and image of the
// node's namespace and the namespace itself.
func (n *Node) cleanup() {
	n.Stop()
	if n.t.Failed() {
		n.t.Logf("%s shoald log:\n%s", n.Name, tail(n.Log(), 200))
	}
	if err := RemoveNamespace(n.Namespace); err != nil {
		n.t.Errorf("clean up containerd namespace %s: %v", n.Namespace, err)
	}
	if err := WaitShims(n.Namespace, 15*time.Second); err != nil {
		n.t.Error(err)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Namespace).CombinedOutput(); err != nil {
		n.t.Errorf("remove network namespace %s: %v %s", n.Namespace, err, out)
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
