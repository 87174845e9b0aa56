package lab

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-project/shoal/identity"
)

// Names and places the lab owns. Down finds leftovers by these alone.
const (
	// BridgeName is the underlay bridge in the host's namespace.
	BridgeName = "shoallab0"
	// NamespacePrefix starts every node's network namespace and
	// containerd namespace (shoal-lab-manager1).
	NamespacePrefix = "shoal-lab-"
	// LinkPrefix starts the host end of every node's veth (sl-worker2).
	LinkPrefix = "sl-"
	// DataRoot holds one data dir per node, with its shoald.log.
	DataRoot = "/var/lib/shoal-lab"
	// RunRoot holds the sockets, the state file and the context file.
	RunRoot = "/run/shoal-lab"
	// ContextFile names the sockets plain shoalctl talks to while a lab
	// is up, one a line: the managers', tried in turn (a shoalctl that
	// knows only one reads the first line, manager1's).
	ContextFile = RunRoot + "/context"
	// DefaultSubnet is the underlay. It is unlikely to collide with a
	// host's own networks, and Up checks that it does not.
	DefaultSubnet = "10.213.0.0/24"
	// Port is where every node's shoald listens on its underlay address.
	Port = identity.DefaultPort
	// DefaultContainerd is the host's containerd, shared by all nodes.
	DefaultContainerd = "/run/containerd/containerd.sock"

	stateFile = RunRoot + "/lab.json"
	// netnsDir is where named network namespaces are mounted (as
	// `ip netns` does; /var/run is a link to /run).
	netnsDir = "/run/netns"
	// maxLinkName is IFNAMSIZ-1.
	maxLinkName = 15
)

// Timings.
const (
	// DefaultReadyTimeout bounds waiting for one step of a node's start:
	// its API to answer or it to be Ready. A join issues a certificate,
	// may add a raft voter and opens a session; on a busy 2-core machine
	// that can take several seconds, so leave a wide margin.
	DefaultReadyTimeout = 90 * time.Second
	// pollInterval is how often a wait asks again: short enough that Up
	// is not slowed noticeably, long enough not to load the managers.
	pollInterval = 100 * time.Millisecond
	// rpcTimeout bounds one Control API call to a local socket; they
	// answer in milliseconds unless the daemon is wedged.
	rpcTimeout = 5 * time.Second
	// killWait bounds waiting for a SIGKILLed process to be gone; the
	// kernel needs a moment to tear down a process with many threads.
	killWait = 15 * time.Second
	// stopGrace is how long StopNode lets shoald shut down after SIGTERM
	// before it is killed.
	stopGrace = 20 * time.Second
	// purgeTimeout bounds removing one containerd namespace (tasks are
	// killed and waited for).
	purgeTimeout = 2 * time.Minute
)

// Role is what a node joins as.
type Role string

// Roles.
const (
	RoleManager Role = "manager"
	RoleWorker  Role = "worker"
)

// Node is one node of the lab.
type Node struct {
	// Name is the node's hostname in the cluster: manager1, worker2.
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Addr is the node's underlay address, on eth0 in its namespace.
	Addr netip.Addr `json:"address"`
	// Namespace names both the network namespace and the containerd
	// namespace of the node.
	Namespace string `json:"namespace"`
	DataDir   string `json:"data_dir"`
	// Socket is the node's Control API unix socket.
	Socket string `json:"socket"`
	// PID is shoald's process id as last started by the lab (0 if never).
	PID int `json:"pid"`
}

// AdvertiseAddr is where other nodes reach this node's shoald.
func (n Node) AdvertiseAddr() string {
	return netip.AddrPortFrom(n.Addr, Port).String()
}

// Link is the host end of the node's veth; setting it down cuts the node
// off the underlay.
func (n Node) Link() string { return LinkPrefix + n.Name }

// LogFile is where the node's shoald writes its output.
func (n Node) LogFile() string { return filepath.Join(n.DataDir, "shoald.log") }

// Config says what lab to make.
type Config struct {
	// Managers is the number of managers, at least 1. manager1 creates
	// the cluster; the others join with the manager token.
	Managers int
	// Workers is the number of workers; they join with the worker token.
	Workers int
	// Subnet is the underlay (IPv4). Zero means DefaultSubnet. The
	// bridge takes its first address, the nodes the following ones.
	Subnet netip.Prefix
	// Shoald is the path of the shoald binary; empty means FindShoald("").
	Shoald string
	// Images are image tarballs (OCI or Docker archive) imported into
	// every node's containerd namespace before its shoald starts.
	Images []string
	// ShoaldArgs are extra flags for every shoald (--log-level debug,
	// --heartbeat-period 500ms).
	ShoaldArgs []string
	// ContainerdAddress is containerd's socket; empty means
	// DefaultContainerd.
	ContainerdAddress string
	// ReadyTimeout bounds each wait for a node; zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Progress, when set, receives one line per step for a person
	// watching `lab up`.
	Progress io.Writer
	// Logger receives details; nil means slog.Default().
	Logger *slog.Logger
}

// ErrNoManager is returned for a lab without managers.
var ErrNoManager = errors.New("a lab needs at least one manager (--managers 1 or more)")

func (c *Config) defaults() {
	if !c.Subnet.IsValid() {
		c.Subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	if c.ContainerdAddress == "" {
		c.ContainerdAddress = DefaultContainerd
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

// Plan returns the nodes a configuration makes, with their names and
// addresses, and the bridge's address, without touching the machine. It
// is where every argument error is found.
func Plan(cfg Config) (gateway netip.Prefix, nodes []Node, err error) {
	cfg.defaults()
	if cfg.Managers < 1 {
		return netip.Prefix{}, nil, ErrNoManager
	}
	if cfg.Workers < 0 {
		return netip.Prefix{}, nil, fmt.Errorf("--workers %d: the number of workers cannot be negative", cfg.Workers)
	}
	for _, last := range []string{string(RoleManager) + strconv.Itoa(cfg.Managers), string(RoleWorker) + strconv.Itoa(cfg.Workers)} {
		if err := checkLinkName(last); err != nil {
			return netip.Prefix{}, nil, err
		}
	}
	subnet := cfg.Subnet
	if !subnet.Addr().Is4() {
		return netip.Prefix{}, nil, fmt.Errorf("subnet %s: the lab needs an IPv4 subnet", subnet)
	}
	subnet = subnet.Masked()
	count := cfg.Managers + cfg.Workers
	// The network and broadcast addresses are unusable, and the bridge
	// takes one more.
	hostBits := 32 - subnet.Bits()
	if hostBits < 2 || 1<<hostBits-3 < count {
		usable := 0
		if hostBits >= 2 {
			usable = 1<<hostBits - 3
		}
		return netip.Prefix{}, nil, fmt.Errorf("subnet %s is too small for %d nodes (it has room for %d): choose a larger --subnet", subnet, count, usable)
	}
	first := subnet.Addr().Next()
	gateway = netip.PrefixFrom(first, subnet.Bits())
	addr := first
	for i := 1; i <= cfg.Managers; i++ {
		addr = addr.Next()
		nodes = append(nodes, newNode(RoleManager, i, addr))
	}
	for i := 1; i <= cfg.Workers; i++ {
		addr = addr.Next()
		nodes = append(nodes, newNode(RoleWorker, i, addr))
	}
	return gateway, nodes, nil
}

// newNode is the i-th node of a role, at addr, with the names and places
// that follow from its name.
func newNode(role Role, i int, addr netip.Addr) Node {
	name := string(role) + strconv.Itoa(i)
	return Node{
		Name:      name,
		Role:      role,
		Addr:      addr,
		Namespace: NamespacePrefix + name,
		DataDir:   filepath.Join(DataRoot, name),
		Socket:    filepath.Join(RunRoot, name+".sock"),
	}
}

// checkLinkName refuses a node whose veth name would be too long.
func checkLinkName(name string) error {
	if len(LinkPrefix+name) > maxLinkName {
		return fmt.Errorf("node name %s is too long for a link name: use fewer nodes", name)
	}
	return nil
}

// planAdd returns the nodes that adding managers and workers to the lab
// in st makes: numbered on from the last of their role, on the addresses
// after the highest one taken. The address a lab client takes (AddClient)
// is left free. Like Plan, it touches nothing.
func planAdd(st state, managers, workers int) ([]Node, error) {
	switch {
	case managers < 0 || workers < 0:
		return nil, fmt.Errorf("lab add --managers %d --workers %d: the numbers cannot be negative", managers, workers)
	case managers == 0 && workers == 0:
		return nil, errors.New("lab add: say how many nodes to add, with --managers N or --workers N")
	}
	last := map[Role]int{}
	highest := st.Gateway.Addr()
	for _, n := range st.Nodes {
		if i, err := strconv.Atoi(strings.TrimPrefix(n.Name, string(n.Role))); err == nil && i > last[n.Role] {
			last[n.Role] = i
		}
		if n.Addr.Compare(highest) > 0 {
			highest = n.Addr
		}
	}
	client := clientAddr(st.Subnet)
	var nodes []Node
	addr := highest
	for _, role := range []Role{RoleManager, RoleWorker} {
		count := managers
		if role == RoleWorker {
			count = workers
		}
		for range count {
			addr = addr.Next()
			if addr == client {
				addr = addr.Next()
			}
			// The last address is the broadcast address.
			if !st.Subnet.Contains(addr) || !st.Subnet.Contains(addr.Next()) {
				return nil, fmt.Errorf("lab add: subnet %s has no address left for %d more nodes; the lab has %d", st.Subnet, managers+workers, len(st.Nodes))
			}
			last[role]++
			n := newNode(role, last[role], addr)
			if err := checkLinkName(n.Name); err != nil {
				return nil, err
			}
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}
