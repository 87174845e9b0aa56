package netagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	shoalnet "github.com/shoal-project/shoal/network"
	"github.com/shoal-project/shoal/network/attach"
	"github.com/shoal-project/shoal/network/lb"
	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/nft"
	"github.com/shoal-project/shoal/network/overlay"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Load balancer backends Config.LBBackend may name.
const (
	LBAuto     = "auto"
	LBNFTables = "nftables"
	LBIPVS     = "ipvs"
)

// DefaultDNSPort is where the resolver listens when Config.DNSPort is 0:
// tasks' resolv.conf cannot name another port.
const DefaultDNSPort = 53

// Retry back-off after a failed reconcile: quick enough that a transient
// netlink error (EBUSY, a device being renamed) heals in about a second,
// capped so a persistent failure is retried and logged twice a minute, not
// in a loop.
const (
	retryFirst = 500 * time.Millisecond
	retryMax   = 30 * time.Second
)

// Config says where and how an Agent works.
type Config struct {
	NodeID    string
	DataAddr  netip.Addr // this node's underlay IP (VTEP)
	LBBackend string     // "auto" (ipvs only if ipvs.Available(), else nftables), "nftables", "ipvs"
	StateDir  string     // where per-task resolv.conf files live
	NetNSPath string     // namespace to work in; "" = caller's
	DNSPort   int        // port of the embedded resolver; 0 means 53
	Upstreams []string   // upstream DNS servers "ip:port"; nil = read from /etc/resolv.conf
	Logger    *slog.Logger
}

// Agent is a node's network agent. Its methods are safe for concurrent use.
type Agent struct {
	cfg Config
	log *slog.Logger

	overlays *overlay.Manager
	attacher *attach.Attacher
	masq     *attach.Masquerader
	vips     *vipAddrs
	// host is a netlink handle in the node's namespace.
	host     *netlink.Handle
	balancer lb.Balancer
	dns      resolver
	guard    *guard
	// sysctls the namespace needs: forwarding, and what the LB backend needs.
	sysctls []sysctl
	ipvs    bool
	// vipMasquerade: see compute.
	vipMasquerade bool

	// mu serialises reconciles and guards the view and what was applied.
	mu   sync.Mutex
	view *view
	cur  *desired // the last computed desired state
	// applied holds each part as last applied with success; a part not
	// marked applied is (re)applied at the next reconcile.
	applied applied
	// index is what DNS lookups read, swapped whole by reconciles.
	index struct {
		sync.RWMutex
		x *dnsIndex
	}

	// retryStop cancels the background reconcile after a failure, if one
	// runs; retries counts those goroutines so Close can wait for them.
	retryStop context.CancelFunc
	retries   sync.WaitGroup
	closed    bool
	// problems are the view problems last logged, so a bad item is logged
	// when it appears, not at every Apply.
	problems map[string]bool
}

// applied is what a reconcile found in place or put there.
type applied struct {
	lb        *lb.State
	overlays  []overlay.NetworkState
	overlayOK bool
	subnets   []netip.Prefix
	subnetsOK bool
	dnsAddrs  []netip.Prefix
	dnsOK     bool
	guard     *guardState
	tunnel    *overlay.TunnelState
	vips      []netip.Addr
	vipsOK    bool
	sysctls   bool
}

// New builds an Agent. Of the kernel it only asks, in the namespace, for
// br_netfilter's conntrack on bridged traffic (see compute); the rest waits
// for the first Apply.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("network agent: no node id")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("network agent: no state directory")
	}
	if cfg.DNSPort == 0 {
		cfg.DNSPort = DefaultDNSPort
	}
	if cfg.DNSPort < 0 || cfg.DNSPort > 65535 {
		return nil, fmt.Errorf("network agent: DNS port %d out of range", cfg.DNSPort)
	}
	if cfg.LBBackend == "" {
		cfg.LBBackend = LBAuto
	}
	switch cfg.LBBackend {
	case LBAuto, LBNFTables, LBIPVS:
	default:
		return nil, fmt.Errorf("network agent: load balancer backend %q: want %q, %q or %q", cfg.LBBackend, LBAuto, LBNFTables, LBIPVS)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	a := &Agent{cfg: cfg, log: log.With("component", "netagent", "node", cfg.NodeID), view: newView()}
	ok := false
	defer func() {
		if !ok {
			a.release()
		}
	}()
	var err error
	if a.overlays, err = overlay.NewManager(overlay.Config{
		UnderlayAddr: cfg.DataAddr, TunnelAddr: overlay.TunnelAddr(cfg.NodeID),
		NetNSPath: cfg.NetNSPath, Logger: a.log,
	}); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	if a.attacher, err = attach.NewAttacher(cfg.NetNSPath); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	if a.masq, err = attach.NewMasquerader(cfg.NetNSPath); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	if a.host, err = shoalnet.NetlinkHandle(cfg.NetNSPath); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	a.vips = &vipAddrs{nl: a.host}
	if a.guard, err = newGuard(cfg.NetNSPath, cfg.DNSPort); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	if a.balancer, err = a.newBalancer(); err != nil {
		return nil, fmt.Errorf("network agent: %w", err)
	}
	if err := a.removeOtherBackend(); err != nil {
		// Not fatal: the published ports this backend programs may still
		// work, where no node would answer at all if shoald did not start.
		a.log.Warn("the load balancer backend not in use left rules behind; remove them (`shoald leave` does) if published ports misbehave", "err", err)
	}
	if a.dns, err = newResolver(cfg, a.lookup, a.log); err != nil {
		return nil, fmt.Errorf("network agent: DNS resolver: %w", err)
	}
	// Both backends: the nft one's conntrack and IPVS's reply hook see a
	// VIP backend's reply, bridged back over the overlay, only through
	// br_netfilter; masqueraded instead, it would leave from the overlay's
	// gateway address, which every node has, and a backend on another node
	// would answer its own.
	a.vipMasquerade = true
	if err := setSysctls(cfg.NetNSPath, []sysctl{bridgeNFCall}); err != nil {
		a.log.Warn("bridged traffic bypasses netfilter, so service VIPs reach only tasks on this node; load br_netfilter (modprobe br_netfilter) and restart", "err", err)
	} else {
		a.vipMasquerade = false
		a.sysctls = append(a.sysctls, bridgeNFCall)
	}
	a.cur = compute(a.view, cfg.NodeID, a.vipMasquerade)
	ok = true
	return a, nil
}

// lbBackend resolves a configured load balancer backend: auto is IPVS
// exactly where the kernel has it (ipvsAvailable, ipvs.Available for real),
// nftables elsewhere; the others are taken as they are.
func lbBackend(configured string, ipvsAvailable func() bool) string {
	if configured != LBAuto {
		return configured
	}
	if ipvsAvailable() {
		return LBIPVS
	}
	return LBNFTables
}

func (a *Agent) newBalancer() (lb.Balancer, error) {
	backend := lbBackend(a.cfg.LBBackend, ipvs.Available)
	a.log.Info("load balancer", "backend", backend, "configured", a.cfg.LBBackend)
	a.sysctls = []sysctl{ipForward}
	if backend == LBIPVS {
		// NewKernel sets the namespace's IPVS sysctls and timeouts.
		a.ipvs = true
		b, err := ipvs.NewKernel(a.cfg.NetNSPath, ipvs.WithMarkLogger(a.log))
		if err != nil {
			return nil, fmt.Errorf("ipvs load balancer: %w", err)
		}
		return b, nil
	}
	opts := []nft.Option{nft.WithLogger(a.log)}
	if a.cfg.NetNSPath != "" {
		ns, err := netns.GetFromPath(a.cfg.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", a.cfg.NetNSPath, err)
		}
		opts = append(opts, nft.WithNetNS(ns))
		b, err := nft.New(opts...)
		if err != nil {
			ns.Close()
			return nil, fmt.Errorf("nftables load balancer: %w", err)
		}
		return &nsBalancer{Balancer: b, ns: ns}, nil
	}
	b, err := nft.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables load balancer: %w", err)
	}
	return b, nil
}

// nsBalancer closes the namespace handle the nft balancer works in with it.
type nsBalancer struct {
	*nft.Balancer
	ns netns.NsHandle
}

func (b *nsBalancer) Close() error {
	err := b.Balancer.Close()
	b.ns.Close()
	return err
}

// Apply merges delta into the view (full replaces it) and reconciles the
// kernel. On error the merged view is kept and a full reconcile is retried
// in the background, with back-off, until it succeeds or Apply is called
// again.
func (a *Agent) Apply(ctx context.Context, delta *api.NetworkDelta, full bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("network agent is closed")
	}
	// A retry still waiting gives up: this reconcile supersedes it, and one
	// that holds the lock now sees its context cancelled when it resumes.
	a.cancelRetry()
	a.view.merge(delta, full)
	a.cur = compute(a.view, a.cfg.NodeID, a.vipMasquerade)
	problems := make(map[string]bool, len(a.cur.problems))
	for _, p := range a.cur.problems {
		problems[p.Error()] = true
		if !a.problems[p.Error()] {
			a.log.Warn("network view item not applied", "err", p)
		}
	}
	a.problems = problems
	err := a.reconcile(ctx)
	if err != nil {
		a.log.Error("network reconcile failed; retrying in the background", "err", err)
		a.startRetry()
	}
	return err
}

// reconcile applies the parts of a.cur that differ from what was applied:
// the load balancer first, so a backend that leaves is out of it when Apply
// returns. Callers hold a.mu.
func (a *Agent) reconcile(ctx context.Context) error {
	d := a.cur
	ap := &a.applied
	var errs []error
	a.setIndex(d.dns)
	if ap.lb == nil || !reflect.DeepEqual(*ap.lb, d.lb) {
		ap.lb = nil
		if err := a.balancer.Apply(ctx, d.lb); err != nil {
			errs = append(errs, fmt.Errorf("load balancer: %w", err))
		} else {
			s := d.lb
			ap.lb = &s
		}
	}
	// The VIPs once their frontends exist, so no task's ARP is answered for
	// a VIP the node cannot balance yet.
	if !ap.vipsOK || !slices.Equal(ap.vips, d.vips) {
		ap.vipsOK = false
		if err := a.vips.sync(d.vips); err != nil {
			errs = append(errs, err)
		} else {
			ap.vips, ap.vipsOK = d.vips, true
		}
	}
	if !ap.sysctls {
		if err := setSysctls(a.cfg.NetNSPath, a.sysctls); err != nil {
			errs = append(errs, err)
		} else {
			ap.sysctls = true
		}
	}
	// The guard before the overlays: a new peer's VXLAN is let in by the
	// time the overlays send to it.
	if ap.guard == nil || !reflect.DeepEqual(*ap.guard, d.guard) {
		ap.guard = nil
		if err := a.guard.sync(d.guard); err != nil {
			errs = append(errs, err)
		} else {
			g := d.guard
			ap.guard = &g
		}
	}
	// The tunnel before the overlays when the node has an encrypted
	// network (their VXLAN devices sit on it), after them when not (they
	// are gone by then).
	if d.tunnel.Active {
		errs = append(errs, a.applyTunnel(d.tunnel))
	}
	if !ap.overlayOK || !reflect.DeepEqual(ap.overlays, d.overlays) {
		ap.overlayOK = false
		if err := a.overlays.Apply(ctx, d.overlays); err != nil {
			errs = append(errs, fmt.Errorf("overlays: %w", err))
		} else {
			ap.overlays, ap.overlayOK = d.overlays, true
		}
	}
	if !d.tunnel.Active {
		errs = append(errs, a.applyTunnel(d.tunnel))
	}
	if !ap.subnetsOK || !slices.Equal(ap.subnets, d.subnets) {
		ap.subnetsOK = false
		if err := a.syncMasquerade(d.subnets); err != nil {
			errs = append(errs, err)
		} else {
			ap.subnets, ap.subnetsOK = d.subnets, true
		}
	}
	if a.dns != nil && (!ap.dnsOK || !slices.Equal(ap.dnsAddrs, d.dnsAddrs)) {
		ap.dnsOK = false
		if err := a.dns.SetAddrs(d.dnsAddrs); err != nil {
			errs = append(errs, fmt.Errorf("DNS listeners: %w", err))
		} else {
			ap.dnsAddrs, ap.dnsOK = d.dnsAddrs, true
		}
	}
	return errors.Join(errs...)
}

// applyTunnel applies the WireGuard tunnel's state if it changed. Callers
// hold a.mu.
func (a *Agent) applyTunnel(s overlay.TunnelState) error {
	ap := &a.applied
	if ap.tunnel != nil && reflect.DeepEqual(*ap.tunnel, s) {
		return nil
	}
	ap.tunnel = nil
	if err := a.overlays.ApplyTunnel(s); err != nil {
		return fmt.Errorf("tunnel: %w", err)
	}
	ap.tunnel = &s
	return nil
}

// TunnelKey returns the node's WireGuard public key, which peers encrypt
// its encrypted networks' traffic to, or an error saying why it has none.
func (a *Agent) TunnelKey() ([]byte, error) {
	k, err := a.overlays.TunnelKey()
	if err != nil {
		return nil, err
	}
	return k[:], nil
}

// syncMasquerade makes the masquerade rules exactly those of subnets.
func (a *Agent) syncMasquerade(subnets []netip.Prefix) error {
	have, err := a.masq.Subnets()
	if err != nil {
		return fmt.Errorf("masquerade: %w", err)
	}
	var errs []error
	for _, s := range subnets {
		if !slices.Contains(have, s) {
			if err := a.masq.Ensure(s); err != nil {
				errs = append(errs, fmt.Errorf("masquerade %s: %w", s, err))
			}
		}
	}
	for _, s := range have {
		if !slices.Contains(subnets, s) {
			if err := a.masq.Remove(s); err != nil {
				errs = append(errs, fmt.Errorf("stop masquerading %s: %w", s, err))
			}
		}
	}
	return errors.Join(errs...)
}

// startRetry starts the background reconcile. Callers hold a.mu.
func (a *Agent) startRetry() {
	a.cancelRetry()
	ctx, cancel := context.WithCancel(context.Background())
	a.retryStop = cancel
	a.retries.Add(1)
	go func() {
		defer a.retries.Done()
		wait := retryFirst
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			a.mu.Lock()
			if ctx.Err() != nil {
				a.mu.Unlock()
				return
			}
			// Everything again, not only what failed: a failure may have
			// left any part half done, and each part's apply is a
			// difference against the kernel, cheap where nothing is off.
			a.applied = applied{}
			err := a.reconcile(ctx)
			a.mu.Unlock()
			if err == nil {
				a.log.Info("network reconcile succeeded after retry")
				return
			}
			if ctx.Err() != nil {
				return
			}
			wait = min(2*wait, retryMax)
			a.log.Warn("network reconcile retry failed", "err", err, "next", wait)
		}
	}()
}

// cancelRetry stops the background reconcile, if any. Callers hold a.mu.
func (a *Agent) cancelRetry() {
	if a.retryStop != nil {
		a.retryStop()
		a.retryStop = nil
	}
}

func (a *Agent) setIndex(x *dnsIndex) {
	a.index.Lock()
	a.index.x = x
	a.index.Unlock()
}

// lookup is the resolver's Lookup.
func (a *Agent) lookup(src netip.Addr, name string) ([]netip.Addr, bool) {
	a.index.RLock()
	x := a.index.x
	a.index.RUnlock()
	return x.lookup(src, name)
}

// attachmentID names the veth of a task on a network.
func attachmentID(taskID, networkID string) string { return taskID + "/" + networkID }

// Attach gives the task, whose network namespace is at netnsPath, one
// interface per attachment (eth0, eth1, ... in order) with its address and
// MAC, MTU underlay − 50, and a default route via the gateway of its first
// non-ingress network (ingress's if it has no other). Interfaces already as
// asked are left alone; any other is replaced.
func (a *Agent) Attach(ctx context.Context, t *api.Task, netnsPath string) error {
	type plan struct {
		spec    attach.Spec
		ingress bool
	}
	a.mu.Lock()
	var plans []plan
	var err error
	for i, na := range t.GetNetworks() {
		n, ok := a.view.networks[na.GetNetworkId()]
		if !ok {
			err = fmt.Errorf("attach task %s: network %s is not in this node's network view yet (the managers send it with the task's assignment)", t.GetId(), na.GetNetworkId())
			break
		}
		at, perr := parseAttachment(na)
		if perr != nil {
			err = fmt.Errorf("attach task %s: %w", t.GetId(), perr)
			break
		}
		mtu, merr := a.overlays.MTU(overlay.Network{ID: n.GetId(), VNI: n.GetVni()})
		if merr != nil {
			err = fmt.Errorf("attach task %s: %w", t.GetId(), merr)
			break
		}
		plans = append(plans, plan{ingress: n.GetIngress(), spec: attach.Spec{
			ID:        attachmentID(t.GetId(), n.GetId()),
			NetNSPath: netnsPath,
			Bridge:    overlay.BridgeName(n.GetVni()),
			Addr:      at.prefix,
			MAC:       at.mac,
			MTU:       mtu,
			IfName:    fmt.Sprintf("eth%d", i),
		}})
		if gw, gerr := netip.ParseAddr(n.GetGateway()); gerr == nil {
			plans[len(plans)-1].spec.Gateway = gw
		}
	}
	a.mu.Unlock()
	if err != nil {
		return err
	}
	route := slices.IndexFunc(plans, func(p plan) bool { return !p.ingress })
	if route < 0 {
		route = 0
	}
	for i := range plans {
		if i != route {
			plans[i].spec.Gateway = netip.Addr{}
		}
	}
	for _, p := range plans {
		if !attached(a.host, p.spec) {
			if err := a.attacher.Attach(ctx, p.spec); err != nil {
				return fmt.Errorf("attach task %s: %w", t.GetId(), err)
			}
		}
		// Hairpin: a task sent to itself through a VIP gets the frame back
		// out of its own port, which br_netfilter bridges it to.
		name := attach.HostVethName(p.spec.ID)
		l, err := a.host.LinkByName(name)
		if err == nil {
			err = a.host.LinkSetHairpin(l, true)
		}
		if err != nil {
			return fmt.Errorf("attach task %s: hairpin on %s: %w", t.GetId(), name, err)
		}
	}
	return nil
}

// Detach removes the host ends of the task's veths (the task's ends go with
// them). What is already gone is no error.
func (a *Agent) Detach(ctx context.Context, t *api.Task) error {
	var errs []error
	for _, na := range t.GetNetworks() {
		if err := a.attacher.Detach(ctx, attachmentID(t.GetId(), na.GetNetworkId())); err != nil {
			errs = append(errs, fmt.Errorf("detach task %s: %w", t.GetId(), err))
		}
	}
	// The container that mounted it is gone.
	if id := t.GetId(); id != "" && id == filepath.Base(id) {
		if err := os.Remove(a.resolvPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("detach task %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// resolvPath is where the task's resolv.conf is written.
func (a *Agent) resolvPath(taskID string) string {
	return filepath.Join(a.cfg.StateDir, "resolv", taskID+".conf")
}

// ResolvConf writes <StateDir>/resolv/<task id>.conf pointing the task at
// the resolver on its first network's gateway and returns its path, or ""
// when the task has no network.
func (a *Agent) ResolvConf(t *api.Task) (string, error) {
	if len(t.GetNetworks()) == 0 {
		return "", nil
	}
	if t.GetId() == "" || t.GetId() != filepath.Base(t.GetId()) {
		return "", fmt.Errorf("resolv.conf: task id %q is not a file name", t.GetId())
	}
	var server netip.Addr
	a.mu.Lock()
	for _, na := range t.GetNetworks() {
		n, ok := a.view.networks[na.GetNetworkId()]
		if !ok {
			continue
		}
		if gw, err := netip.ParseAddr(n.GetGateway()); err == nil {
			server = gw
			break
		}
	}
	a.mu.Unlock()
	if !server.IsValid() {
		return "", fmt.Errorf("resolv.conf of task %s: none of its networks is in this node's network view yet", t.GetId())
	}
	dir := filepath.Join(a.cfg.StateDir, "resolv")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("resolv.conf of task %s: %w", t.GetId(), err)
	}
	path := a.resolvPath(t.GetId())
	// ndots:0 sends every name to our resolver as given: service names have
	// no dots, and no search domain would help.
	content := fmt.Sprintf("nameserver %s\noptions ndots:0\n", server)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return "", fmt.Errorf("resolv.conf of task %s: %w", t.GetId(), err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("resolv.conf of task %s: %w", t.GetId(), err)
	}
	return path, nil
}

// Close stops the resolver and removes everything the agent made in the
// kernel: the load balancer table, the overlay bridges and VXLAN devices,
// the guard table, and the masquerade rules. Task interfaces are the
// caller's to Detach.
func (a *Agent) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.cancelRetry()
	a.mu.Unlock()
	a.retries.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	if a.dns != nil {
		if err := a.dns.Close(); err != nil {
			errs = append(errs, fmt.Errorf("stop DNS: %w", err))
		}
		a.dns = nil
	}
	if err := a.balancer.Close(); err != nil {
		errs = append(errs, fmt.Errorf("remove load balancer: %w", err))
	}
	a.balancer = nil
	if err := a.overlays.Apply(context.Background(), nil); err != nil {
		errs = append(errs, fmt.Errorf("remove overlays: %w", err))
	}
	if err := a.overlays.ApplyTunnel(overlay.TunnelState{}); err != nil {
		errs = append(errs, fmt.Errorf("remove tunnel: %w", err))
	}
	// After the overlays: no VXLAN device is left to take what it let in.
	if err := a.guard.remove(); err != nil {
		errs = append(errs, err)
	}
	if err := a.syncMasquerade(nil); err != nil {
		errs = append(errs, err)
	}
	if err := a.vips.sync(nil); err != nil {
		errs = append(errs, err)
	}
	a.release()
	return errors.Join(errs...)
}

// release closes the handles New opened.
func (a *Agent) release() {
	if a.dns != nil {
		a.dns.Close()
	}
	if a.balancer != nil {
		// Closing removes the table; New never applied, so there is none.
		a.balancer.Close()
	}
	if a.masq != nil {
		a.masq.Close()
	}
	if a.host != nil {
		a.host.Close()
	}
	if a.attacher != nil {
		a.attacher.Close()
	}
	if a.overlays != nil {
		a.overlays.Close()
	}
	if a.guard != nil {
		a.guard.Close()
	}
}
