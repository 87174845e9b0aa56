package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/dispatcher"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/seal"
	"github.com/shoal-project/shoal/worker"
)

// joinTimeout bounds the whole of `shoald join` before the node runs.
const joinTimeout = time.Minute

// nodeFile is what a node remembers between runs besides its
// credentials and raft state.
type nodeFile struct {
	NodeID        string   `json:"node_id"`
	ListenAddr    string   `json:"listen_addr"`
	AdvertiseAddr string   `json:"advertise_addr"`
	Managers      []string `json:"managers"`
	// ManagerNodes names the node behind each manager address: the
	// worker accepts a manager's certificate only for these nodes
	// (absent in node files from before they were recorded).
	ManagerNodes []managerNode `json:"manager_nodes,omitempty"`
}

type managerNode struct {
	NodeID string `json:"node_id"`
	Addr   string `json:"addr"`
}

// managerList is the pool's view of the node file's managers.
func (n nodeFile) managerList() []*api.ManagerNode {
	if len(n.ManagerNodes) == 0 {
		return worker.ManagerNodes(n.Managers)
	}
	out := make([]*api.ManagerNode, 0, len(n.ManagerNodes))
	for _, m := range n.ManagerNodes {
		out = append(out, &api.ManagerNode{NodeId: m.NodeID, Addr: m.Addr})
	}
	return out
}

// setManagers records a manager list in the node file.
func (n *nodeFile) setManagers(managers []*api.ManagerNode) {
	n.Managers, n.ManagerNodes = nil, nil
	for _, m := range managers {
		n.Managers = append(n.Managers, m.GetAddr())
		if m.GetNodeId() != "" {
			n.ManagerNodes = append(n.ManagerNodes, managerNode{NodeID: m.GetNodeId(), Addr: m.GetAddr()})
		}
	}
	if len(n.ManagerNodes) != len(n.Managers) {
		n.ManagerNodes = nil
	}
}

func nodeFilePath(dataDir string) string { return filepath.Join(dataDir, "node.json") }
func certDir(dataDir string) string      { return filepath.Join(dataDir, "certificates") }
func workerDir(dataDir string) string    { return filepath.Join(dataDir, "worker") }
func networkDir(dataDir string) string   { return filepath.Join(dataDir, "network") }
func logDir(dataDir string) string       { return filepath.Join(dataDir, "logs") }

// AdminDir is where a manager keeps the admin credentials for shoalctl
// --host.
func AdminDir(dataDir string) string { return filepath.Join(dataDir, "admin") }

var nodeFileMu sync.Mutex

func (n nodeFile) save(dataDir string) error {
	nodeFileMu.Lock()
	defer nodeFileMu.Unlock()
	b, err := json.MarshalIndent(n, "", "  ")
	if err != nil {
		return err
	}
	tmp := nodeFilePath(dataDir) + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write node file: %w", err)
	}
	return os.Rename(tmp, nodeFilePath(dataDir))
}

func loadNodeFile(dataDir string) (nodeFile, error) {
	var n nodeFile
	b, err := os.ReadFile(nodeFilePath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return n, fmt.Errorf("%s holds no node: create a cluster with `shoald init` or join one with `shoald join`", dataDir)
	} else if err != nil {
		return n, fmt.Errorf("read node file: %w", err)
	}
	if err := json.Unmarshal(b, &n); err != nil {
		return n, fmt.Errorf("read node file %s: %w", nodeFilePath(dataDir), err)
	}
	return n, nil
}

// advertiseAddr picks the address other nodes reach us at: the flag, else
// the listen address if it names one, else this host's address on its
// default route (as `docker swarm init` does), else loopback.
func advertiseAddr(flag, listen string) (string, error) {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("--listen-addr %q: %w", listen, err)
	}
	if flag != "" {
		host, p, err := net.SplitHostPort(flag)
		if err != nil {
			// An address without a port takes the listen port.
			host, p = flag, port
		}
		if net.ParseIP(host) == nil {
			return "", fmt.Errorf("--advertise-addr %q: want an IP address (with an optional port)", flag)
		}
		return net.JoinHostPort(host, p), nil
	}
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return listen, nil
	}
	// The kernel's choice of source address towards a public address;
	// UDP "connect" sends nothing.
	if c, err := net.Dial("udp", "192.0.2.1:9"); err == nil {
		ip := c.LocalAddr().(*net.UDPAddr).IP.String()
		c.Close()
		return net.JoinHostPort(ip, port), nil
	}
	return net.JoinHostPort("127.0.0.1", port), nil
}

// removeNodeState deletes what init and join write into a data dir, so a
// failed attempt leaves it as it was.
func removeNodeState(dataDir string) {
	for _, p := range []string{certDir(dataDir), AdminDir(dataDir), manager.RaftDir(dataDir), nodeFilePath(dataDir)} {
		os.RemoveAll(p)
	}
}

// node is a running shoald: its identity, TLS material and listeners.
type node struct {
	cfg     Config
	file    nodeFile
	creds   identity.Credentials
	keypair *identity.Keypair
	// trust is the root CAs the node accepts: from its credentials, and
	// on a manager from the store as it changes (a CA rotation).
	trust *identity.Trust
	role  identity.Role
	// renewNow asks renewLoop for a renewal now (the managers want one).
	renewNow chan struct{}

	listener *clusterListener
	mgr      *manager.Manager

	connMu sync.Mutex
	conns  map[string]*grpc.ClientConn

	// credsMu serialises saving the node's credentials (renewal, and
	// resealing the key when the unlock key changes).
	credsMu sync.Mutex
	// unlockKey seals the node's private key on disk while the cluster
	// has autolock on and this node is a manager (see sealer).
	unlockKey []byte
	// agent is the node's worker agent, set by serve before anything
	// renews the node's key; a renewal hands it the new cache key.
	agent *worker.Agent
}

// assignmentsKeyInfo is the HKDF info that derives the key sealing the
// worker's cached assignments from the node's private key
// (docs/security.md): nothing more to keep on disk, and a key of its own,
// unrelated to any other use of the node key.
const assignmentsKeyInfo = "shoal/worker/assignments-cache/v1"

// assignmentsKey is the key the worker seals its cached assignments with:
// HKDF-SHA256 of the node's private key (PKCS #8 DER). A renewal brings a
// new node key, and so a new cache key.
func assignmentsKey(creds identity.Credentials) ([]byte, error) {
	cert, err := creds.TLSCertificate()
	if err != nil {
		return nil, fmt.Errorf("derive the assignments cache key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("derive the assignments cache key: %w", err)
	}
	return seal.DeriveKey(der, assignmentsKeyInfo), nil
}

// sealer is what the node's key is saved with: the unlock key on a manager
// of a cluster with autolock, nothing otherwise (workers are never given
// the unlock key).
func (n *node) sealer(role identity.Role) identity.KeySealer {
	if n.unlockKey == nil || role != identity.RoleManager {
		return nil
	}
	return state.NewKeySealer(n.unlockKey)
}

// followUnlockKey reseals the node's key when the cluster's unlock key
// changes (the manager calls it).
func (n *node) followUnlockKey(key []byte) {
	n.credsMu.Lock()
	defer n.credsMu.Unlock()
	n.unlockKey = key
	if err := identity.SaveCredentialsSealed(certDir(n.cfg.DataDir), n.creds, n.sealer(n.role)); err != nil {
		n.cfg.Logger.Error("reseal the node's key for the cluster's unlock key", "autolock", key != nil, "err", err)
		return
	}
	n.cfg.Logger.Info("node key saved", "sealed", n.sealer(n.role) != nil)
}

func newNode(cfg Config, file nodeFile, creds identity.Credentials) (*node, error) {
	kp, err := creds.Keypair()
	if err != nil {
		return nil, err
	}
	trust, err := creds.Trust()
	if err != nil {
		return nil, err
	}
	id, err := creds.Identity()
	if err != nil {
		return nil, err
	}
	if id.NodeID != file.NodeID {
		return nil, fmt.Errorf("the certificate in %s names node %s, but this node is %s", certDir(cfg.DataDir), id.NodeID, file.NodeID)
	}
	return &node{cfg: cfg, file: file, creds: creds, keypair: kp, trust: trust, role: id.Role, renewNow: make(chan struct{}, 1), conns: map[string]*grpc.ClientConn{}}, nil
}

// openNode is the node of a data dir, with the credentials kept there;
// unlockKey opens a sealed key (autolock).
func openNode(cfg Config, file nodeFile, unlockKey []byte) (*node, error) {
	var s identity.KeySealer
	if unlockKey != nil {
		s = state.NewKeySealer(unlockKey)
	}
	creds, err := identity.LoadCredentialsSealed(certDir(cfg.DataDir), s)
	if err != nil {
		return nil, fmt.Errorf("%w (the node's certificates are in %s)", err, certDir(cfg.DataDir))
	}
	n, err := newNode(cfg, file, creds)
	if n != nil {
		n.unlockKey = unlockKey
	}
	return n, err
}

// loadNode reads the node a data dir holds.
func loadNode(cfg Config) (nodeFile, *node, error) {
	file, err := loadNodeFile(cfg.DataDir)
	if err != nil {
		return file, nil, err
	}
	n, err := openNode(cfg, file, nil)
	return file, n, err
}

// dial returns a (cached, lazily connecting) mutual-TLS connection to a
// manager, for the node's own calls (forwarding, joining raft).
func (n *node) dial(addr string) (*grpc.ClientConn, error) {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	if c := n.conns[addr]; c != nil {
		return c, nil
	}
	c, err := n.newConn(addr, nil)
	if err != nil {
		return nil, err
	}
	n.conns[addr] = c
	return c, nil
}

// newConn makes a new mutual-TLS connection to a manager; the caller owns
// it (the worker's manager pool keeps its own). verify, when set, must
// accept the identity the manager's certificate carries, on every
// handshake, after the certificate was verified against the node's trust.
func (n *node) newConn(addr string, verify func(identity.Identity) error) (*grpc.ClientConn, error) {
	tlsCfg := identity.ClientConfigTrust(n.keypair, n.trust, identity.ManagerServerName, identity.ALPNGRPC)
	if verify != nil {
		verifyTrust := tlsCfg.VerifyConnection
		tlsCfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if verifyTrust != nil {
				if err := verifyTrust(cs); err != nil {
					return err
				}
			}
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("manager %s presented no certificate", addr)
			}
			id, err := identity.IdentityOf(cs.PeerCertificates[0])
			if err != nil {
				return err
			}
			if err := verify(id); err != nil {
				return fmt.Errorf("manager at %s: %w", addr, err)
			}
			return nil
		}
	}
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), identity.KeepaliveDialOption())
	if err != nil {
		return nil, fmt.Errorf("dial manager %s: %w", addr, err)
	}
	return c, nil
}

func (n *node) closeConns() {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	for a, c := range n.conns {
		c.Close()
		delete(n.conns, a)
	}
}

// authorizer checks callers of the cluster port against the store: a
// removed node's or a replaced certificate is refused, and raft is spoken
// only with current managers.
func (n *node) authorizer() ca.Authorizer {
	a := ca.Authorizer{}
	if n.mgr != nil {
		a.Check = ca.Checker(n.mgr.State().Store())
		a.CheckRaft = ca.RaftChecker(n.mgr.State().Store())
	}
	return a
}

// listen opens the cluster port (managers only: workers serve nothing)
// and returns raft's stream layer on it.
func (n *node) listen() (*state.StreamLayer, error) {
	// Raft connections are refused until the manager exists and
	// serveManager gives the listener its store to check them against.
	l, err := listenCluster(n.file.ListenAddr, identity.ServerConfigTrust(n.keypair, n.trust), n.cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", n.file.ListenAddr, err)
	}
	sl, err := n.raftTransport()
	if err != nil {
		l.Close()
		return nil, err
	}
	l.setRaft(sl)
	n.listener = l
	return sl, nil
}

// raftTransport is raft over the cluster port.
func (n *node) raftTransport() (*state.StreamLayer, error) {
	addr, err := net.ResolveTCPAddr("tcp", n.file.AdvertiseAddr)
	if err != nil {
		return nil, fmt.Errorf("advertise address %q: %w", n.file.AdvertiseAddr, err)
	}
	sl := state.NewStreamLayer(addr, identity.ClientConfigTrust(n.keypair, n.trust, identity.ManagerServerName, identity.ALPNRaft))
	return sl, nil
}

func (n *node) managerConfig(transport *state.StreamLayer) manager.Config {
	return manager.Config{
		DataDir:    n.cfg.DataDir,
		NodeID:     n.file.NodeID,
		Logger:     n.cfg.Logger,
		Dispatcher: dispatcher.Config{HeartbeatPeriod: n.cfg.HeartbeatPeriod, Grace: n.cfg.HeartbeatGrace},
		Transport:  state.NewNetworkTransport(transport, nil),
		Identify: func(ctx context.Context) (string, error) {
			id, err := identity.IdentityFromContext(ctx)
			if err != nil {
				return "", err
			}
			return id.NodeID, nil
		},
		Dial:        func(_ context.Context, addr string) (grpc.ClientConnInterface, error) { return n.dial(addr) },
		UnlockKey:   n.unlockKey,
		OnUnlockKey: n.followUnlockKey,
	}
}

// Init creates a new cluster with this node as its first manager and runs
// the node until ctx ends.
func Init(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if manager.HasState(cfg.DataDir) {
		return fmt.Errorf("%s already holds a cluster: use `shoald run` to restart this node, or remove the directory to start over", cfg.DataDir)
	}
	if _, err := os.Stat(nodeFilePath(cfg.DataDir)); err == nil {
		return fmt.Errorf("%s already holds a node: use `shoald run` to restart it, or remove the directory to start over", cfg.DataDir)
	}
	adv, err := advertiseAddr(cfg.AdvertiseAddr, cfg.ListenAddr)
	if err != nil {
		return err
	}
	ingress := manager.Ingress{Name: cfg.IngressName, Subnet: cfg.IngressSubnet, VNI: cfg.IngressVNI}
	if err := ingress.Check(); err != nil {
		return err
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	// Whatever fails from here on must leave the data dir as it was.
	undo := func() { removeNodeState(cfg.DataDir) }
	file := nodeFile{NodeID: api.NewID(), ListenAddr: cfg.ListenAddr, AdvertiseAddr: adv}
	file.setManagers([]*api.ManagerNode{{NodeId: file.NodeID, Addr: adv}})
	exe, err := newExecutor(ctx, cfg, file, false)
	if err != nil {
		return err
	}
	defer exe.Close()
	desc, err := exe.Describe(ctx)
	if err != nil {
		return fmt.Errorf("describe node: %w", err)
	}

	founding, err := ca.Found(file.NodeID, adv, desc)
	if err != nil {
		return err
	}
	if err := identity.SaveCredentials(certDir(cfg.DataDir), founding.Credentials); err != nil {
		undo()
		return err
	}
	if err := identity.SaveCredentials(AdminDir(cfg.DataDir), founding.Admin); err != nil {
		undo()
		return err
	}
	n, err := newNode(cfg, file, founding.Credentials)
	if err != nil {
		undo()
		return err
	}
	sl, err := n.listen()
	if err != nil {
		undo()
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	m, err := manager.Init(startCtx, n.managerConfig(sl), founding.Cluster, founding.Node, ingress)
	if err != nil {
		n.listener.Close()
		undo()
		return fmt.Errorf("create cluster: %w", err)
	}
	n.mgr = m
	if err := file.save(cfg.DataDir); err != nil {
		m.Close()
		n.listener.Close()
		undo()
		return err
	}
	cfg.Logger.Info("cluster created", "node", file.NodeID, "data_dir", cfg.DataDir, "advertise", adv)
	return n.serve(ctx, exe)
}

// Run restarts a node from its data dir and runs it until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	file, err := loadNodeFile(cfg.DataDir)
	if err != nil {
		return err
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	n, err := openNode(cfg, file, nil)
	locked := errors.Is(err, identity.ErrKeySealed) ||
		(err == nil && n.role == identity.RoleManager && manager.HasState(cfg.DataDir) && manager.Locked(cfg.DataDir))
	if locked {
		// Autolock: nothing is served, not even the cluster port, until
		// `shoald unlock` gives the key.
		key, werr := waitUnlock(ctx, cfg.Socket, cfg.DataDir, cfg.Logger)
		if werr != nil {
			if ctx.Err() != nil {
				return nil
			}
			return werr
		}
		n, err = openNode(cfg, file, key)
	}
	if err != nil {
		return err
	}
	exe, err := newExecutor(ctx, cfg, file, true)
	if err != nil {
		return err
	}
	defer exe.Close()
	switch {
	case n.role == identity.RoleManager:
		sl, err := n.listen()
		if err != nil {
			return err
		}
		if manager.HasState(cfg.DataDir) {
			mc := n.managerConfig(sl)
			mc.ForceNewCluster = cfg.ForceNewCluster
			n.mgr, err = manager.Open(ctx, mc)
		} else {
			// Promoted: this node has a manager certificate but no raft
			// state yet.
			n.mgr, err = manager.Join(n.managerConfig(sl))
			if err == nil {
				go n.joinRaft(ctx, file.Managers)
			}
		}
		if err != nil {
			n.listener.Close()
			return err
		}
	case manager.HasState(cfg.DataDir):
		// Demoted: the raft state of a former manager must not be used
		// again (it would rejoin with a stale log).
		cfg.Logger.Info("this node was demoted: removing its raft state")
		if err := os.RemoveAll(manager.RaftDir(cfg.DataDir)); err != nil {
			return fmt.Errorf("remove raft state of a demoted manager: %w", err)
		}
	}
	return n.serve(ctx, exe)
}

// ErrRoleChanged ends serve when the node's certificate now carries
// another role: shoald restarts itself in it (see Main).
var ErrRoleChanged = errors.New("the node's role changed")

// Join makes this node part of an existing cluster, then runs it.
func Join(ctx context.Context, cfg Config, token, addr string) error {
	cfg.defaults()
	if _, err := os.Stat(nodeFilePath(cfg.DataDir)); err == nil || manager.HasState(cfg.DataDir) {
		return fmt.Errorf("%s already holds a node: use `shoald run`, or remove the directory to join afresh", cfg.DataDir)
	}
	tok, err := identity.ParseToken(token)
	if err != nil {
		return err
	}
	adv, err := advertiseAddr(cfg.AdvertiseAddr, cfg.ListenAddr)
	if err != nil {
		return err
	}
	_, statErr := os.Stat(cfg.DataDir)
	dirExisted := statErr == nil
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	defer lock.Close()
	undo := func() { removeNodeState(cfg.DataDir) }
	// A refused join leaves nothing: not even the data dir it made.
	joined := false
	defer func() {
		if joined {
			return
		}
		undo()
		if dirExisted {
			os.Remove(lockPath(cfg.DataDir))
		} else {
			os.RemoveAll(cfg.DataDir)
		}
	}()

	jctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	// containerd answers first: a node that cannot run containers must
	// not become part of the cluster. (The executor, which makes the
	// node's containerd namespace, comes only once the join succeeded.)
	engine, err := containerdVersion(jctx, cfg.ContainerdAddress)
	if err != nil {
		return err
	}
	desc := hostDescription(cfg.Hostname, engine)

	admitted, err := worker.Join(jctx, worker.JoinRequest{Manager: addr, Token: tok, AdvertiseAddr: adv, Description: desc})
	if err != nil {
		return err
	}
	creds, managers := admitted.Credentials, admitted.Managers
	if err := identity.SaveCredentials(certDir(cfg.DataDir), creds); err != nil {
		undo()
		return err
	}
	file := nodeFile{NodeID: admitted.NodeID, ListenAddr: cfg.ListenAddr, AdvertiseAddr: adv}
	file.setManagers(admitted.ManagerNodes)
	if err := file.save(cfg.DataDir); err != nil {
		undo()
		return err
	}
	joined = true
	n, err := newNode(cfg, file, creds)
	if err != nil {
		undo()
		return err
	}
	exe, err := newExecutor(ctx, cfg, file, false)
	if err != nil {
		return err
	}
	defer exe.Close()
	cfg.Logger.Info("joined the cluster", "node", file.NodeID, "role", n.role, "managers", strings.Join(managers, ","))
	if n.role == identity.RoleManager {
		sl, err := n.listen()
		if err != nil {
			return err
		}
		m, err := manager.Join(n.managerConfig(sl))
		if err != nil {
			n.listener.Close()
			return err
		}
		n.mgr = m
		go n.joinRaft(ctx, managers)
	}
	return n.serve(ctx, exe)
}

// joinRaft asks the leader to add this manager as a voter, following
// redirects, until it succeeds or ctx ends.
func (n *node) joinRaft(ctx context.Context, managers []string) {
	try := append([]string{}, managers...)
	for attempt := 0; ctx.Err() == nil; attempt++ {
		addr := try[attempt%len(try)]
		c, err := n.dial(addr)
		if err == nil {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err = api.NewRaftMembershipClient(c).Join(cctx, &api.JoinRequest{Addr: n.file.AdvertiseAddr})
			cancel()
			if err == nil {
				n.cfg.Logger.Info("joined raft", "via", addr)
				return
			}
			if leader := n.mgr.State().LeaderAddr(); leader != "" {
				try = append([]string{leader}, managers...)
			}
		}
		n.cfg.Logger.Warn("join raft; retrying", "via", addr, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (n *node) serve(ctx context.Context, exe *executor) error {
	cfg := n.cfg
	defer n.closeConns()
	if n.mgr != nil {
		defer n.mgr.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	var servers []*grpc.Server

	if n.mgr != nil {
		servers = append(servers, n.serveManager(ctx, &wg, errc))
		defer n.listener.Close()
	}

	l, err := listenUnix(cfg.Socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.Socket)
	local := identity.LocalIdentity(n.file.NodeID)
	unixSrv := grpc.NewServer(append(ca.Authorizer{Local: &local}.ServerOptions(),
		// A worker has no control API: say where it is.
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.FailedPrecondition, "this node is a worker: run shoalctl on a manager, or with --host MANAGER")
		}))...)
	if n.mgr != nil {
		n.mgr.RegisterLocal(unixSrv)
	}
	servers = append(servers, unixSrv)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := unixSrv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("serve API: %w", err)
		}
	}()

	n.credsMu.Lock()
	cacheKey, err := assignmentsKey(n.creds)
	n.credsMu.Unlock()
	if err != nil {
		return err
	}
	pool := n.managerPool()
	roleChange := make(chan api.NodeRole, 1)
	agent := worker.New(worker.Config{
		NodeID: n.file.NodeID, Executor: exe, Managers: pool, Logger: cfg.Logger.With("component", "worker"),
		StateDir: workerDir(cfg.DataDir), CacheKey: cacheKey,
		Network: exe.network, DataAddr: exe.dataAddr, DrainDelay: cfg.DrainDelay,
		OnRenewCertificate: func() {
			select {
			case n.renewNow <- struct{}{}:
			default:
			}
		},
		OnDesiredRole: func(r api.NodeRole) {
			if identity.RoleOf(r) != n.role {
				select {
				case roleChange <- r:
				default:
				}
			}
		},
	})
	n.agent = agent
	wg.Add(2)
	go func() {
		defer wg.Done()
		agent.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		n.renewLoop(ctx, pool)
	}()
	cfg.Logger.Info("shoald ready", "node", n.file.NodeID, "role", n.role, "socket", cfg.Socket, "listen", n.file.ListenAddr, "advertise", n.file.AdvertiseAddr)
	if cfg.Ready != nil {
		cfg.Ready()
	}

	var runErr error
wait:
	for {
		select {
		case <-ctx.Done():
			break wait
		case runErr = <-errc:
			break wait
		case want := <-roleChange:
			if err := n.renew(ctx, pool); err != nil {
				cfg.Logger.Warn("renew certificate for a new role", "want", want, "err", err)
				continue
			}
			if n.role == identity.RoleOf(want) {
				cfg.Logger.Info("node role changed: restarting in it", "role", n.role)
				runErr = ErrRoleChanged
				break wait
			}
			cfg.Logger.Warn("renewed certificate does not carry the desired role yet", "have", n.role, "want", want)
		}
	}
	cancel()
	for _, srv := range servers {
		stopped := make(chan struct{})
		go func() {
			srv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(stopTimeout):
			srv.Stop()
		}
	}
	wg.Wait()
	pool.Close()
	cfg.Logger.Info("shoald stopped; containers keep running", "node", n.file.NodeID)
	return runErr
}

// managerPool is the worker's pool of manager connections, remembering
// each new manager list in the node file.
func (n *node) managerPool() *worker.ManagerPool {
	return worker.NewManagerPool(n.file.managerList(), n.newConn, func(managers []*api.ManagerNode) {
		f := n.file
		f.setManagers(managers)
		if err := f.save(n.cfg.DataDir); err != nil {
			n.cfg.Logger.Warn("remember managers", "err", err)
		}
	})
}

// serveManager serves the cluster port (gRPC, and raft for current
// managers only) and runs the manager, in goroutines counted in wg that
// end with ctx (and the returned server's stop); a serving error goes to
// errc.
func (n *node) serveManager(ctx context.Context, wg *sync.WaitGroup, errc chan<- error) *grpc.Server {
	auth := n.authorizer()
	n.listener.setRaftAuth(auth)
	opts := append([]grpc.ServerOption{grpc.Creds(identity.AcceptedTLSCredentials())}, identity.KeepaliveServerOptions()...)
	opts = append(opts, manager.ServerOptions()...)
	tcpSrv := grpc.NewServer(append(opts, auth.ServerOptions()...)...)
	n.mgr.Register(tcpSrv)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := tcpSrv.Serve(n.listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			errc <- fmt.Errorf("serve cluster port: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		n.mgr.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		n.listener.watchRaftPeers(ctx, n.mgr.State().Store())
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		ca.FollowTrust(ctx, n.mgr.State().Store(), n.trust, n.cfg.Logger.With("component", "trust"))
	}()
	return tcpSrv
}

// renewCheck is how often the node looks at its certificate's age.
const renewCheck = time.Minute

// renewLoop renews the node certificate before it expires, through any
// manager, and swaps it in without restarting anything.
func (n *node) renewLoop(ctx context.Context, pool *worker.ManagerPool) {
	t := time.NewTicker(renewCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.renewNow:
			// The managers asked (a CA rotation): renew whatever the age.
			n.cfg.Logger.Info("the managers ask for a certificate renewal")
		case <-t.C:
			if leaf := n.keypair.Leaf(); leaf != nil && !identity.NeedsRenewal(leaf, time.Now()) {
				continue
			}
		}
		if err := n.renew(ctx, pool); err != nil {
			n.cfg.Logger.Warn("renew node certificate", "err", err)
		}
	}
}

func (n *node) renew(ctx context.Context, pool *worker.ManagerPool) error {
	creds, err := worker.Renew(ctx, pool, n.creds.CACertPEM)
	if err != nil {
		return err
	}
	cert, err := creds.TLSCertificate()
	if err != nil {
		return err
	}
	id, err := creds.Identity()
	if err != nil {
		return err
	}
	cacheKey, err := assignmentsKey(creds)
	if err != nil {
		return err
	}
	n.credsMu.Lock()
	err = identity.SaveCredentialsSealed(certDir(n.cfg.DataDir), creds, n.sealer(id.Role))
	if err == nil {
		n.creds, n.role = creds, id.Role
	}
	n.credsMu.Unlock()
	if err != nil {
		return err
	}
	// A manager's trust follows its store (ca.FollowTrust), which is
	// never behind the answer a renewal got; a worker's is what the
	// managers name in the answer.
	if n.mgr == nil {
		if err := n.trust.Set(creds.CACertPEM); err != nil {
			return err
		}
	}
	n.keypair.Set(cert)
	if n.agent != nil {
		n.agent.SetCacheKey(cacheKey)
	}
	// Open connections keep presenting the old certificate, which the
	// managers now refuse: drop them so the next calls redial.
	pool.Reset()
	n.closeConns()
	n.cfg.Logger.Info("node certificate renewed", "not_after", cert.Leaf.NotAfter)
	return nil
}

// containerdVersion checks containerd answers, without touching any of its
// namespaces.
func containerdVersion(ctx context.Context, address string) (string, error) {
	c, err := containerd.New(address)
	if err != nil {
		return "", fmt.Errorf("connect to containerd at %s: %w (is containerd running?)", address, err)
	}
	defer c.Close()
	v, err := c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("containerd at %s does not answer: %w (is containerd running?)", address, err)
	}
	return "containerd " + v.Version, nil
}

// hostDescription is what a joining node tells the managers about itself
// before its agent reports the full description.
func hostDescription(hostname, engine string) *api.NodeDescription {
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	return &api.NodeDescription{Hostname: hostname, Os: runtime.GOOS, Arch: runtime.GOARCH, NanoCpus: int64(runtime.NumCPU()) * 1e9, Engine: engine}
}
