package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
)

// Lab is a lab that is up: made by Up in this process, or read back by
// Load in a later one.
type Lab struct {
	log          *slog.Logger
	readyTimeout time.Duration

	mu sync.Mutex
	st state
	// children are the shoald processes this process started. Each has
	// a goroutine that reaps it and ends when it ends; Down and StopNode
	// end the processes, so no goroutine outlives the lab.
	children map[string]*child
}

type child struct {
	pid  int
	done chan struct{}
}

// Up makes a lab as cfg says and returns once every node is Ready. On any
// failure it removes everything it made (as Down does) before returning
// the error, so nothing is left half made.
func Up(ctx context.Context, cfg Config) (_ *Lab, err error) {
	cfg.defaults()
	gateway, nodes, err := Plan(cfg)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("lab up needs root: it makes network namespaces, links and containerd namespaces")
	}
	bin, err := FindShoald(cfg.Shoald)
	if err != nil {
		return nil, err
	}
	caps, err := probeShoald(ctx, bin)
	if err != nil {
		return nil, err
	}
	if len(nodes) > 1 && !caps.join {
		return nil, fmt.Errorf("%s has no `join` command yet, so a lab can only have one node: use --managers 1 --workers 0, or a newer shoald", bin)
	}
	if err := checkImages(cfg.Images); err != nil {
		return nil, err
	}
	if found := Leftovers(ctx, cfg.ContainerdAddress); len(found) > 0 {
		return nil, fmt.Errorf("a lab is already up or left over (found %s): run `shoalctl lab down` first", abridge(found, 4))
	}
	if err := checkSubnetFree(cfg.Subnet.Masked()); err != nil {
		return nil, err
	}

	l := &Lab{
		log:          cfg.Logger,
		readyTimeout: cfg.ReadyTimeout,
		children:     make(map[string]*child),
		st: state{
			Subnet:            cfg.Subnet.Masked(),
			Gateway:           gateway,
			Shoald:            bin,
			ShoaldArgs:        slices.Clone(cfg.ShoaldArgs),
			ContainerdAddress: cfg.ContainerdAddress,
			Listen:            caps.listen,
			Images:            absPaths(cfg.Images),
			Nodes:             nodes,
		},
	}
	progress := func(format string, args ...any) { fmt.Fprintf(cfg.Progress, format+"\n", args...) }
	defer func() {
		if err == nil {
			return
		}
		progress("Lab up failed; removing what it made")
		if derr := l.Down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed lab up (run `shoalctl lab down`): %w", derr))
		}
	}()

	for _, dir := range []string{DataRoot, RunRoot} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", dir, err)
		}
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	progress("Creating bridge %s with %s", BridgeName, gateway)
	if err := createBridge(gateway); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		progress("Creating node %s (%s) in network namespace %s", n.Name, n.Addr, n.Namespace)
		if err := l.makeNode(ctx, n, cfg.Images); err != nil {
			return nil, err
		}
	}

	first := nodes[0]
	progress("Starting %s: shoald init", first.Name)
	if err := l.start(first, "init"); err != nil {
		return nil, err
	}
	if err := l.WaitReady(ctx, first.Name); err != nil {
		return nil, err
	}
	tokens, err := tokensFrom(ctx, first, nodes[1:])
	if err != nil {
		return nil, err
	}
	for _, n := range nodes[1:] {
		progress("Starting %s: shoald join as %s through %s", n.Name, n.Role, first.Name)
		if err := l.join(ctx, n, tokens[n.Role], first); err != nil {
			return nil, err
		}
	}
	progress("Waiting for every node to be Ready")
	if err := l.WaitReady(ctx); err != nil {
		return nil, err
	}
	if err := l.writeContext(); err != nil {
		return nil, err
	}
	return l, nil
}

// join starts n's shoald with `shoald join` through the manager via.
// Managers join one at a time, so for one it waits until it is Ready:
// raft adds one voter per configuration change, and a manager that is not
// Ready yet would make the next join wait on an unsettled quorum.
func (l *Lab) join(ctx context.Context, n Node, token string, via Node) error {
	if err := l.start(n, "join", "--token", token, via.AdvertiseAddr()); err != nil {
		return err
	}
	if n.Role == RoleManager {
		return l.WaitReady(ctx, n.Name)
	}
	return nil
}

// writeContext points plain shoalctl at the lab's managers.
func (l *Lab) writeContext() error {
	var sockets []string
	for _, n := range l.Nodes() {
		if n.Role == RoleManager {
			sockets = append(sockets, n.Socket)
		}
	}
	return writeContext(ContextFile, sockets)
}

// makeNode makes a node's network namespace on the underlay, its data dir,
// and imports the images into its containerd namespace.
func (l *Lab) makeNode(ctx context.Context, n Node, images []string) error {
	if err := createNetns(n.Namespace); err != nil {
		return err
	}
	if err := plumbNode(n, l.st.Gateway); err != nil {
		return err
	}
	if err := os.MkdirAll(n.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir of %s: %w", n.Name, err)
	}
	for _, img := range images {
		if err := importImage(ctx, l.st.ContainerdAddress, n.Namespace, img); err != nil {
			return err
		}
	}
	return nil
}

// checkImages checks that image tarballs are there before anything is
// made.
func checkImages(images []string) error {
	for _, img := range images {
		if st, err := os.Stat(img); err != nil {
			return fmt.Errorf("image tarball: %w", err)
		} else if !st.Mode().IsRegular() {
			return fmt.Errorf("image tarball %s is not a file", img)
		}
	}
	return nil
}

// absPaths makes paths absolute, as the state file keeps them for
// commands run from elsewhere; one that cannot be made so stays as given.
func absPaths(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		if abs, err := filepath.Abs(p); err == nil {
			p = abs
		}
		out[i] = p
	}
	return out
}

func importImage(ctx context.Context, address, namespace, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("image tarball: %w", err)
	}
	defer f.Close()
	if _, err := image.ImportTo(ctx, address, namespace, f); err != nil {
		return fmt.Errorf("import %s into %s: %w", path, namespace, err)
	}
	return nil
}

// Load returns the lab that is up, from its state file; ErrNotUp when
// there is none.
func Load() (*Lab, error) {
	st, err := readState(stateFile)
	if err != nil {
		return nil, err
	}
	return &Lab{
		log:          slog.Default(),
		readyTimeout: DefaultReadyTimeout,
		st:           st,
		children:     make(map[string]*child),
	}, nil
}

// Nodes returns the lab's nodes, managers first.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.st.Nodes)
}

// Node returns the node named name.
func (l *Lab) Node(name string) (Node, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.node(name)
}

func (l *Lab) node(name string) (Node, error) {
	var names []string
	for _, n := range l.st.Nodes {
		if n.Name == name {
			return n, nil
		}
		names = append(names, n.Name)
	}
	return Node{}, fmt.Errorf("no node %q in the lab: it has %s", name, strings.Join(names, ", "))
}

// Subnet is the underlay's prefix.
func (l *Lab) Subnet() netip.Prefix { return l.st.Subnet }

// Gateway is the bridge's address, the nodes' default route.
func (l *Lab) Gateway() netip.Addr { return l.st.Gateway.Addr() }

// ContainerdAddress is the containerd socket the nodes share.
func (l *Lab) ContainerdAddress() string { return l.st.ContainerdAddress }

// Socket is the socket plain shoalctl talks to: manager1's.
func (l *Lab) Socket() string { return l.st.Nodes[0].Socket }

func (l *Lab) save() error { return writeState(stateFile, l.st) }

// start runs `shoald <verb> <args> <node flags>` in the node's namespace,
// detached: its own session, output to the node's log, so it outlives
// the process that started it.
func (l *Lab) start(n Node, verb string, args ...string) error {
	argv := append([]string{verb}, args...)
	argv = append(argv,
		"--data-dir", n.DataDir,
		"--socket", n.Socket,
		"--containerd-address", l.st.ContainerdAddress,
		"--containerd-namespace", n.Namespace,
		"--hostname", n.Name,
	)
	if l.st.Listen {
		argv = append(argv, "--listen-addr", fmt.Sprintf("0.0.0.0:%d", Port), "--advertise-addr", n.AdvertiseAddr())
	}
	argv = append(argv, l.st.ShoaldArgs...)

	logf, err := os.OpenFile(n.LogFile(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", n.Name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: %s %s\n", time.Now().Format(time.RFC3339), l.st.Shoald, strings.Join(redactToken(argv), " "))
	cmd := exec.Command(l.st.Shoald, argv...)
	cmd.Dir = n.DataDir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := startIn(n.Namespace, cmd); err != nil {
		return fmt.Errorf("start shoald on %s: %w", n.Name, err)
	}
	c := &child{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(c.done)
	}()
	l.log.Info("shoald started", "node", n.Name, "verb", verb, "pid", c.pid)

	l.mu.Lock()
	defer l.mu.Unlock()
	l.children[n.Name] = c
	for i := range l.st.Nodes {
		if l.st.Nodes[i].Name == n.Name {
			l.st.Nodes[i].PID = c.pid
		}
	}
	return l.save()
}

// redactToken hides a join token from the log.
func redactToken(argv []string) []string {
	out := slices.Clone(argv)
	for i := range out {
		if out[i] == "--token" && i+1 < len(out) {
			out[i+1] = "<redacted>"
		}
	}
	return out
}

// WaitReady waits until the named nodes (all when none is named) are
// Ready as the managers see them and their shoald serves its socket. It fails early, with the end of its log,
// when a node's shoald has exited.
func (l *Lab) WaitReady(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		for _, n := range l.Nodes() {
			names = append(names, n.Name)
		}
	}
	var want []Node
	for _, name := range names {
		n, err := l.Node(name)
		if err != nil {
			return err
		}
		want = append(want, n)
	}
	ctx, cancel := context.WithTimeout(ctx, l.readyTimeout)
	defer cancel()
	var last string
	for {
		for _, n := range want {
			if len(l.pids(n)) == 0 {
				return fmt.Errorf("shoald on %s exited; the end of %s:\n%s", n.Name, n.LogFile(), tail(n.LogFile(), 20))
			}
		}
		ready, err := l.ready(ctx)
		if err != nil {
			last = err.Error()
		} else {
			var missing []string
			for _, n := range want {
				// The managers may still call a restarted node Ready
				// from its previous life; a served socket shows this
				// one is up too.
				if !ready[n.Name] || !serves(n.Socket) {
					missing = append(missing, n.Name)
				}
			}
			if len(missing) == 0 {
				return nil
			}
			last = "not ready: " + strings.Join(missing, ", ")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to be ready: %w (last: %s); the end of %s:\n%s",
				strings.Join(names, ", "), ctx.Err(), last, want[0].LogFile(), tail(want[0].LogFile(), 20))
		case <-time.After(pollInterval):
		}
	}
}

// serves says whether a shoald accepts connections on socket.
func serves(socket string) bool {
	c, err := net.DialTimeout("unix", socket, rpcTimeout)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// ready asks the managers in turn for the Ready nodes; the first that
// answers wins.
func (l *Lab) ready(ctx context.Context) (map[string]bool, error) {
	nodes, err := l.listNodes(ctx)
	if err != nil {
		return nil, err
	}
	return readyNodes(nodes), nil
}

// pids returns the processes running shoald on the node's data dir: the
// one the lab started, or any other (a restart by hand).
func (l *Lab) pids(n Node) []int {
	l.mu.Lock()
	c := l.children[n.Name]
	l.mu.Unlock()
	if c != nil {
		select {
		case <-c.done:
		default:
			return []int{c.pid}
		}
	}
	if alive(n.PID, n.DataDir) {
		return []int{n.PID}
	}
	procs, err := listProcs()
	if err != nil {
		return nil
	}
	var out []int
	for _, p := range procs {
		if dir, ok := dataDirArg(p.args); ok && dir == n.DataDir && !zombieOrGone(p.pid) {
			out = append(out, p.pid)
		}
	}
	return out
}

// Running says whether the node's shoald runs.
func (l *Lab) Running(name string) (bool, error) {
	n, err := l.Node(name)
	if err != nil {
		return false, err
	}
	return len(l.pids(n)) > 0, nil
}

// KillNode kills the node's shoald with SIGKILL, as a crash would; its
// containers keep running.
func (l *Lab) KillNode(ctx context.Context, name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	if err := killAndWait(ctx, l.pids(n)); err != nil {
		return fmt.Errorf("kill shoald on %s: %w", name, err)
	}
	l.reaped(name)
	return nil
}

// StopNode stops the node's shoald with SIGTERM, and SIGKILL if it has
// not exited after a grace period.
func (l *Lab) StopNode(ctx context.Context, name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	pids := l.pids(n)
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stop shoald on %s: %w", name, err)
		}
	}
	if err := waitGone(ctx, pids, stopGrace); err != nil {
		l.log.Warn("shoald did not stop after SIGTERM; killing it", "node", name, "err", err)
		if err := killAndWait(ctx, pids); err != nil {
			return fmt.Errorf("stop shoald on %s: %w", name, err)
		}
	}
	l.reaped(name)
	return nil
}

// reaped waits for the reaper of a child we started, so the caller sees
// the process fully gone.
func (l *Lab) reaped(name string) {
	l.mu.Lock()
	c := l.children[name]
	delete(l.children, name)
	l.mu.Unlock()
	if c != nil {
		<-c.done
	}
}

// StartNode restarts a stopped node's shoald from its data dir (`shoald
// run`). It returns once the process started; WaitReady waits for the
// node to be Ready.
func (l *Lab) StartNode(ctx context.Context, name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	if len(l.pids(n)) > 0 {
		return fmt.Errorf("shoald on %s already runs", name)
	}
	return l.start(n, "run")
}

// SetLinkDown cuts a node off the underlay by setting the host end of its
// veth down; its shoald keeps running.
func (l *Lab) SetLinkDown(name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	return setLink(n.Link(), false)
}

// SetLinkUp reconnects a node cut off by SetLinkDown.
func (l *Lab) SetLinkUp(name string) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	return setLink(n.Link(), true)
}

// Start starts cmd inside the node's network namespace; the caller waits
// for it. Only the network namespace differs from this process's: the
// filesystem, including /sys, is the host's.
func (l *Lab) Start(name string, cmd *exec.Cmd) error {
	n, err := l.Node(name)
	if err != nil {
		return err
	}
	return startIn(n.Namespace, cmd)
}

// Exec runs argv inside the node's network namespace and returns its
// combined output. A command that fails returns its output with an
// *exec.ExitError in the chain.
func (l *Lab) Exec(ctx context.Context, name string, argv ...string) (string, error) {
	if len(argv) == 0 {
		return "", errors.New("exec: no command given")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := l.Start(name, cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return out.String(), fmt.Errorf("%s on %s: %w", strings.Join(argv, " "), name, err)
	}
	return out.String(), nil
}

// Client returns a Control API client on the node's unix socket; the
// caller closes it.
func (l *Lab) Client(name string) (api.ControlClient, io.Closer, error) {
	n, err := l.Node(name)
	if err != nil {
		return nil, nil, err
	}
	conn, err := dialConn(n.Socket)
	if err != nil {
		return nil, nil, err
	}
	return api.NewControlClient(conn), conn, nil
}

// NodeStatus is a node with what is known of it right now.
type NodeStatus struct {
	Node
	// Running says whether its shoald process runs.
	Running bool `json:"running"`
	// State is the cluster's view ("ready", "down", "ready leader"),
	// empty when no manager answered or the node is unknown to them.
	State string `json:"state,omitempty"`
}

// Status reports every node: whether its shoald runs and, when a manager
// answers, the cluster's view of it.
func (l *Lab) Status(ctx context.Context) []NodeStatus {
	var states map[string]string
	if nodes, err := l.listNodes(ctx); err == nil {
		states = nodeStates(nodes)
	} else {
		l.log.Debug("no manager answered", "err", err)
	}
	var out []NodeStatus
	for _, n := range l.Nodes() {
		out = append(out, NodeStatus{Node: n, Running: len(l.pids(n)) > 0, State: states[n.Name]})
	}
	return out
}

// listNodes asks the managers in turn; the first that answers wins.
func (l *Lab) listNodes(ctx context.Context) ([]*api.Node, error) {
	var errs []error
	for _, n := range l.Nodes() {
		if n.Role != RoleManager {
			continue
		}
		if _, err := os.Stat(n.Socket); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
			continue
		}
		nodes, err := listNodes(ctx, n.Socket)
		if err == nil {
			return nodes, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("no manager answered: %w", errors.Join(errs...))
}

// Down removes the lab and everything any lab left on this machine (see
// the package function Down), after ending the processes this one
// started.
func (l *Lab) Down(ctx context.Context) error {
	err := Down(ctx, l.st.ContainerdAddress, l.log)
	l.mu.Lock()
	children := l.children
	l.children = make(map[string]*child)
	l.mu.Unlock()
	for _, c := range children {
		select {
		case <-c.done:
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		}
	}
	return err
}

// abridge lists the first n items and counts the rest.
func abridge(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

// tail returns the last lines of a file, for error messages.
func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	parts := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
