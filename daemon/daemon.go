package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	ctrexec "github.com/shoal-project/shoal/worker/exec/containerd"
	"github.com/shoal-project/shoal/worker/netagent"
)

// Defaults a node starts with.
// DefaultListenAddr is every address on the cluster port.
var DefaultListenAddr = net.JoinHostPort("0.0.0.0", strconv.Itoa(identity.DefaultPort))

const (
	DefaultDataDir    = "/var/lib/shoal"
	DefaultSocket     = "/run/shoal/shoald.sock"
	DefaultNamespace  = "shoal"
	DefaultContainerd = "/run/containerd/containerd.sock"
	// DefaultDrainDelay covers a node that applies a backend's removal a
	// little after the task's own node (see worker.Config.DrainDelay).
	DefaultDrainDelay = 500 * time.Millisecond
	// stopTimeout bounds a graceful stop of the gRPC server before open
	// streams are cut.
	stopTimeout = 5 * time.Second
	// startTimeout bounds waiting for raft to elect a leader at start.
	startTimeout = 30 * time.Second
)

// Config is a node's configuration, from shoald's flags.
type Config struct {
	DataDir             string
	Socket              string
	ContainerdAddress   string
	ContainerdNamespace string
	// Hostname overrides the node's hostname (lab nodes share a host).
	Hostname string
	// ListenAddr is the cluster port (gRPC and raft, all mutual TLS).
	ListenAddr string
	// AdvertiseAddr is where other nodes reach this one (host:port);
	// derived from the listen address or the default route when empty.
	AdvertiseAddr   string
	HeartbeatPeriod time.Duration
	HeartbeatGrace  time.Duration
	// Ingress* configure the routing mesh's network that init creates.
	IngressName   string
	IngressSubnet string
	IngressVNI    uint32
	// ForceNewCluster (shoald run --force-new-cluster) makes this
	// manager the only member of a new raft group with the old state.
	ForceNewCluster bool
	// DrainDelay is how long a task that serves traffic keeps running
	// after it was told to stop, while the nodes take it out of their load
	// balancers.
	DrainDelay time.Duration
	// LBBackend is the routing mesh's load balancer: auto, nftables or
	// ipvs (netagent.LBAuto...).
	LBBackend string
	// TaskLogDir holds the tasks' stdout and stderr (<task id>.log and its
	// rotated parts); <data dir>/logs when empty. Put it on another file
	// system than the data dir to keep task output and raft apart.
	TaskLogDir string
	// TaskLogMaxSize and TaskLogMaxFiles bound each task's log (see
	// worker/exec/containerd: DefaultLogMaxSize, DefaultLogMaxFiles when
	// zero).
	TaskLogMaxSize  int64
	TaskLogMaxFiles int
	// LogLevel is the --log-level the node runs with (kept to restart in
	// a new role).
	LogLevel string
	Logger   *slog.Logger
	// Ready, if set, is called once the node serves its API.
	Ready func()
}

// taskLogDir is where the tasks' logs go.
func (c Config) taskLogDir() string {
	if c.TaskLogDir != "" {
		return c.TaskLogDir
	}
	return logDir(c.DataDir)
}

func (c *Config) defaults() {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.ContainerdAddress == "" {
		c.ContainerdAddress = DefaultContainerd
	}
	if c.ContainerdNamespace == "" {
		c.ContainerdNamespace = DefaultNamespace
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.LBBackend == "" {
		c.LBBackend = netagent.LBAuto
	}
}

// errDataDirInUse: another process holds the data dir's lock.
var errDataDirInUse = errors.New("in use by another shoald")

func lockPath(dir string) string { return filepath.Join(dir, "lock") }

// lockDataDir makes sure one shoald owns a data dir. The lock goes with
// the process, so a crash never leaves it held. The lock file holds the
// owner's pid, for `shoald leave` to stop it.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	f, err := os.OpenFile(lockPath(dir), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open data dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is %w", dir, errDataDirInUse)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	if err := restrictNodeFiles(dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// restrictNodeFiles makes the data dir and the node's secrets in it
// owner-only (0700 directories, 0600 files), also when an older shoald or
// an operator left them otherwise: the node's and the admin's private
// keys, the node file. The raft state is the manager's to restrict; the
// network and worker state hold files containers read.
func restrictNodeFiles(dir string) error {
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict data dir %s: %w", dir, err)
	}
	for _, sub := range []string{certDir(dir), AdminDir(dir), nodeFilePath(dir), lockPath(dir)} {
		err := filepath.WalkDir(sub, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			mode := os.FileMode(0o600)
			if d.IsDir() {
				mode = 0o700
			} else if !d.Type().IsRegular() {
				return nil
			}
			return os.Chmod(path, mode)
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("restrict %s: %w", sub, err)
		}
	}
	return nil
}

// lockHolder is the pid lockDataDir wrote, 0 when there is none yet.
func lockHolder(dir string) int {
	b, err := os.ReadFile(lockPath(dir))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// newExecutor connects to containerd and sets up the node's network
// agent, which the executor uses to connect tasks. The agent's kernel
// state (overlays, load balancers, task interfaces) outlives shoald, as
// the containers do, so that published services keep answering while
// shoald restarts; the next full network view reconciles it.
//
// waitForContainerd lets a restarted node run while containerd does not
// answer (see ctrexec.Config.WaitForContainerd): it opens its session,
// keeps its tasks as they are, and catches up when containerd returns.
// A node that founds or joins a cluster needs containerd at once.
func newExecutor(ctx context.Context, cfg Config, file nodeFile, waitForContainerd bool) (*executor, error) {
	network, dataAddr, err := newNetworkAgent(cfg, file)
	if err != nil {
		return nil, err
	}
	exe, err := ctrexec.New(ctx, ctrexec.Config{
		Address:     cfg.ContainerdAddress,
		Namespace:   cfg.ContainerdNamespace,
		NodeID:      file.NodeID,
		LogDir:      cfg.taskLogDir(),
		LogMaxSize:  cfg.TaskLogMaxSize,
		LogMaxFiles: cfg.TaskLogMaxFiles,
		Logger:      cfg.Logger.With("component", "executor"),
		Network:     network,

		WaitForContainerd: waitForContainerd,
	})
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w (is containerd running?)", cfg.ContainerdAddress, err)
	}
	return &executor{Executor: exe, hostname: cfg.Hostname, network: network, dataAddr: dataAddr.String()}, nil
}

// newNetworkAgent makes the node's network agent, whose VXLAN endpoint
// (returned) is the node's advertise address.
func newNetworkAgent(cfg Config, file nodeFile) (*netagent.Agent, netip.Addr, error) {
	host, _, err := net.SplitHostPort(file.AdvertiseAddr)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("advertise address %q: %w", file.AdvertiseAddr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, netip.Addr{}, fmt.Errorf("advertise address %q: %w", file.AdvertiseAddr, err)
	}
	dataAddr := ip.Unmap()
	a, err := netagent.New(netagent.Config{
		NodeID:    file.NodeID,
		DataAddr:  dataAddr,
		LBBackend: cfg.LBBackend,
		StateDir:  networkDir(cfg.DataDir),
		Logger:    cfg.Logger,
	})
	return a, dataAddr, err
}

// executor names the node as configured (lab nodes share one host and so
// one kernel hostname) and carries the node's network agent.
type executor struct {
	*ctrexec.Executor
	hostname string
	network  *netagent.Agent
	dataAddr string
}

func (e *executor) Describe(ctx context.Context) (*api.NodeDescription, error) {
	d, err := e.Executor.Describe(ctx)
	if err == nil && e.hostname != "" {
		d.Hostname = e.hostname
	}
	// The WireGuard key when the kernel has WireGuard: without it the
	// node takes no task of an encrypted network (TunnelKey logs why).
	if err == nil && e.network != nil {
		if k, kerr := e.network.TunnelKey(); kerr == nil {
			d.WireguardKey = k
		}
	}
	return d, err
}

// listenUnix opens the API socket, owner-only: whoever can open it is
// root on this node. A socket file left by a crashed shoald is replaced;
// one that still answers means another shoald runs.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if serves(path) {
		return nil, fmt.Errorf("socket %s is served by another shoald", path)
	}
	os.Remove(path)
	// The socket is bound in a private directory (0700), given its mode
	// there and only then renamed into place: it is never reachable at
	// its path with the mode the process umask gave it. (Binding in place
	// and chmod-ing after left a window in which anyone could connect,
	// and a connection made then outlives the chmod.)
	dir, err := os.MkdirTemp(filepath.Dir(path), ".shoald-socket-")
	if err != nil {
		return nil, fmt.Errorf("create socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The socket moves: the caller removes it at its final path.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, fmt.Errorf("create socket %s: %w", path, err)
	}
	return l, nil
}

// serves says whether something accepts connections on the unix socket.
func serves(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
