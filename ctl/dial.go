package ctl

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// target is one shoald whose Control API shoalctl may talk to: the local
// unix socket, or a manager over TCP (host) with mutual TLS using the
// admin credentials in tlsDir.
type target struct {
	socket string
	host   string // HOST:PORT, checked by hostAddr
	tlsDir string
}

func (t target) String() string {
	if t.host != "" {
		return t.host
	}
	return t.socket
}

// targets are the shoalds of one cluster a command may talk to, in the
// order to try them: one socket, the managers of --host m1,m2,m3, or the
// sockets of a lab's managers. cli.targets picks them from the flags; no
// command cares which, or how many.
type targets []target

func (ts targets) String() string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.String()
	}
	return strings.Join(names, ", ")
}

// failoverConnectTimeout bounds connecting to one manager when others are
// left to try: a manager that is gone takes the TCP connect timeout to
// give up on otherwise (grpc's 20 s), while a live one on any sane network
// completes TCP and TLS in well under a second.
const failoverConnectTimeout = 5 * time.Second

// dialTargets makes a client that talks to the first of ts that answers
// (see failover). grpc.NewClient does not connect, so what can be checked
// before the first RPC is checked here, with precise messages: that the
// admin credentials can be read, and that a socket exists.
//
// The order is ts's, except that the one that answered last time comes
// first (see managerMemory).
func dialTargets(_ context.Context, ts targets, memory managerMemory) (api.ControlClient, io.Closer, error) {
	if len(ts) == 0 {
		return nil, nil, errors.New("no shoald to talk to")
	}
	f := &failover{targets: memory.order(ts), memory: memory, conns: make([]*grpc.ClientConn, len(ts))}
	if ts[0].host != "" {
		// One cluster, one set of admin credentials for all its managers.
		cfg, err := adminTLSConfig(ts[0].tlsDir, time.Now())
		if err != nil {
			return nil, nil, err
		}
		f.tlsConfig = cfg
	} else {
		// Fail before any RPC only when no socket is there at all; a
		// missing one among several is skipped when its turn comes.
		var errs []error
		for _, t := range f.targets {
			if _, err := os.Stat(t.socket); err != nil {
				errs = append(errs, argError(t.String(), unreachable(t, err)))
			}
		}
		if len(errs) == len(f.targets) {
			return nil, nil, noneAnswered(f.targets, errs)
		}
	}
	return api.NewControlClient(f), f, nil
}

// failover is a grpc.ClientConnInterface over several shoalds of one
// cluster. A call goes to the current one; when that one cannot be
// reached, to the next, and the one that answers becomes current (and is
// remembered for the next command). Any manager serves the whole Control
// API (followers forward writes to the leader), so which one answers
// does not matter, only that one does.
//
// It moves on only when the call cannot have done anything: it never
// reached the manager (nothing listens, the socket is gone, the TLS
// handshake failed), or it only reads (readOnly) and failed in transit or
// with the manager's own Unavailable (no leader on its side of a
// partition). A write whose connection broke under it may have been
// applied, so its error is reported, not retried elsewhere. A stream
// moves on only when it cannot be opened; a broken stream is reported.
//
// This is by hand rather than grpc's pick_first over an address list:
// that one reports only the last address's error, so the precise reasons
// (whose certificate was refused, which socket is stale) would be lost,
// and it resolves addresses itself, losing DNS names in messages.
type failover struct {
	targets   targets
	tlsConfig *tls.Config // for host targets
	memory    managerMemory

	mu      sync.Mutex
	conns   []*grpc.ClientConn // by index in targets, made on first use
	current int
	// remembered says whether current was given to memory yet.
	remembered bool
}

// Invoke implements grpc.ClientConnInterface.
func (f *failover) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	_, err := f.try(ctx, method, func(cc *grpc.ClientConn) error {
		return cc.Invoke(ctx, method, args, reply, opts...)
	})
	return err
}

// NewStream implements grpc.ClientConnInterface.
func (f *failover) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	var s grpc.ClientStream
	r, err := f.try(ctx, method, func(cc *grpc.ClientConn) error {
		var err error
		s, err = cc.NewStream(ctx, desc, method, opts...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return reachStream{ClientStream: s, reacher: r}, nil
}

// leaderWait bounds how long a read waits for a leader when every manager
// answered that it has none (an election after the leader was lost takes
// a second or two): reads are linearizable, so they need one.
const leaderWait = 10 * time.Second

// leaderRetry is the pause between two rounds of such a read.
const leaderRetry = 250 * time.Millisecond

// try makes the call on the current target, then on the others in turn
// while the way it failed allows it. A read that every manager reached
// answered Unavailable (no leader on its side) is tried again, for up to
// leaderWait.
func (f *failover) try(ctx context.Context, method string, call func(*grpc.ClientConn) error) (reacher, error) {
	deadline := time.Now().Add(leaderWait)
	f.mu.Lock()
	start := f.current
	f.mu.Unlock()
	for {
		// Each round asks in the same order, so that the error names the
		// managers as the first round found them.
		r, err, leaderless := f.round(ctx, method, start, call)
		if !leaderless || !readOnly[method] || time.Now().Add(leaderRetry).After(deadline) {
			return r, err
		}
		select {
		case <-ctx.Done():
			return r, err
		case <-time.After(leaderRetry):
		}
	}
}

// round is one pass of try over the targets. leaderless says that it
// failed, that some target answered Unavailable itself (no leader on its
// side) and that the others could not be reached: a dead leader's
// manager among live followers that have not elected a new one yet.
func (f *failover) round(ctx context.Context, method string, start int, call func(*grpc.ClientConn) error) (_ reacher, _ error, leaderless bool) {
	var errs []error
	for i := range f.targets {
		k := (start + i) % len(f.targets)
		t := f.targets[k]
		r := reacher{target: t, tlsConfig: f.tlsConfig}
		cc, err := f.conn(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		raw := call(cc)
		how, err := r.explain(ctx, raw)
		if how == answered {
			f.answered(k)
		}
		noLeader := how == answered && status.Code(raw) == codes.Unavailable
		leaderless = leaderless || noLeader
		moveOn := how == unreached ||
			readOnly[method] && (how == dropped || noLeader)
		if !moveOn {
			if how == dropped && !readOnly[method] {
				err = fmt.Errorf("%w (the connection broke during the call, so it may have been done: look before you repeat it)", err)
			}
			return r, err, false
		}
		if len(f.targets) > 1 {
			err = argError(t.String(), err)
		}
		errs = append(errs, err)
	}
	return reacher{}, noneAnswered(f.targets, errs), leaderless
}

// answered makes target k the current one, and remembers it as the one
// to ask first next time.
func (f *failover) answered(k int) {
	f.mu.Lock()
	changed := f.current != k || !f.remembered
	f.current, f.remembered = k, true
	f.mu.Unlock()
	if changed {
		f.memory.remember(f.targets, f.targets[k])
	}
}

// conn returns the connection to target k, made on first use.
func (f *failover) conn(k int) (*grpc.ClientConn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if cc := f.conns[k]; cc != nil {
		return cc, nil
	}
	t := f.targets[k]
	opts := []grpc.DialOption{}
	var addr string
	if t.host != "" {
		addr = "dns:///" + t.host
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(f.tlsConfig)))
	} else {
		path, err := filepath.Abs(t.socket)
		if err != nil {
			return nil, fmt.Errorf("socket path %q: %w", t.socket, err)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, unreachable(t, err)
		}
		addr = "unix://" + path
		// Plain gRPC over the unix socket: the socket is 0600 and owned
		// by root, so the kernel has already authenticated the caller.
		opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	if len(f.targets) > 1 {
		opts = append(opts, grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.DefaultConfig, MinConnectTimeout: failoverConnectTimeout}))
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to shoald at %s: %w", t, err)
	}
	f.conns[k] = cc
	return cc, nil
}

// Close closes every connection made.
func (f *failover) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for i, cc := range f.conns {
		if cc != nil {
			errs = append(errs, cc.Close())
			f.conns[i] = nil
		}
	}
	return errors.Join(errs...)
}

// noneAnswered is the error when no target could take a call: with one
// target its own error, with several every one's, one a line.
func noneAnswered(ts targets, errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(append([]error{fmt.Errorf("none of the %d managers could answer:", len(ts))}, errs...)...)
}

// readOnly are the Control methods that change nothing, which can be
// asked again of another manager whatever became of the first attempt.
// A method not listed counts as a write (GetJoinToken may rotate).
var readOnly = map[string]bool{
	api.Control_GetCluster_FullMethodName:   true,
	api.Control_ListNodes_FullMethodName:    true,
	api.Control_GetNode_FullMethodName:      true,
	api.Control_ListImages_FullMethodName:   true,
	api.Control_GetService_FullMethodName:   true,
	api.Control_ListServices_FullMethodName: true,
	api.Control_ListTasks_FullMethodName:    true,
	api.Control_WatchTasks_FullMethodName:   true,
	api.Control_GetNetwork_FullMethodName:   true,
	api.Control_ListNetworks_FullMethodName: true,

	api.Control_ListAdminCertificates_FullMethodName: true,
}

// defaultPort is shoald's default --listen-addr port, which serves the
// Control API, the dispatcher and raft alike.
var defaultPort = strconv.Itoa(identity.DefaultPort)

// hostAddrs is a --host list (from source, --host or $SHOAL_HOST) as
// HOST:PORT addresses: entries separated by commas, each checked by
// hostAddr, a manager named twice kept once. It is checked before
// connecting, as arguments are, and an error names the entry at fault.
func hostAddrs(source, list string) ([]string, error) {
	entries := strings.Split(list, ",")
	var out []string
	for i, entry := range entries {
		entry = strings.TrimSpace(entry)
		if entry == "" && len(entries) > 1 {
			return nil, fmt.Errorf("invalid %s %q: entry %d is empty; want HOST[:PORT] entries separated by commas", source, list, i+1)
		}
		addr, err := hostAddr(source, entry)
		if err != nil {
			if len(entries) > 1 {
				return nil, fmt.Errorf("%w (entry %d of %q)", err, i+1, list)
			}
			return nil, err
		}
		if !slices.Contains(out, addr) {
			out = append(out, addr)
		}
	}
	return out, nil
}

// hostnameRE is what a host name may be made of: DNS labels, and the
// underscores some local names have.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$`)

// hostAddr is one manager of --host as HOST:PORT, the port defaulting to
// shoald's.
func hostAddr(source, host string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("invalid %s %q: %s", source, host, why)
	}
	h := strings.TrimPrefix(host, "tcp://")
	if h == "" || strings.Contains(h, "://") || strings.ContainsAny(h, "/ \t") {
		return bad("want HOST[:PORT], for example 192.0.2.10:" + defaultPort)
	}
	name, port, err := net.SplitHostPort(h)
	if err != nil {
		// No port; a bare IPv6 address may come with brackets or without.
		name, port = h, defaultPort
		if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
			name = h[1 : len(h)-1]
		}
	}
	if name == "" || net.ParseIP(name) == nil && !hostnameRE.MatchString(name) {
		return bad("want HOST[:PORT], for example 192.0.2.10:" + defaultPort)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return bad("the port must be a number from 1 to 65535")
	}
	return net.JoinHostPort(name, port), nil
}

// adminTLSConfig reads the admin credentials in dir: the cluster's CA, to
// know the managers, and the admin certificate, to be known by them.
func adminTLSConfig(dir string, now time.Time) (*tls.Config, error) {
	read := func(name, what string) ([]byte, error) {
		path := filepath.Join(dir, name)
		b, err := os.ReadFile(path)
		if err != nil {
			// The path is in the message already.
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, credentialsError(path, what, err)
		}
		return b, nil
	}
	caPEM, err := read(identity.CAFile, "the cluster's CA certificate")
	if err != nil {
		return nil, err
	}
	certPEM, err := read(identity.CertFile, "the admin certificate")
	if err != nil {
		return nil, err
	}
	keyPEM, err := read(identity.KeyFile, "the admin key")
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, credentialsError(filepath.Join(dir, identity.CAFile), "the cluster's CA certificate", errors.New("no PEM certificate in it"))
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, credentialsError(filepath.Join(dir, identity.CertFile), "the admin certificate and key",
			fmt.Errorf("with %s: %w", identity.KeyFile, err))
	}
	// An expired certificate would only show up as a handshake the
	// managers refuse; say it plainly instead.
	if leaf := pair.Leaf; leaf != nil && now.After(leaf.NotAfter) {
		return nil, credentialsError(filepath.Join(dir, identity.CertFile), "the admin certificate",
			fmt.Errorf("expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	// Managers are verified by role (ManagerServerName), not address:
	// they move and are reached through NAT and lab namespaces.
	return identity.ClientConfig(identity.NewKeypair(pair), pool, identity.ManagerServerName, identity.ALPNGRPC), nil
}

// credentialsError says which admin credential file is the problem and
// how to get a good one.
func credentialsError(path, what string, err error) error {
	hint := "run shoalctl on a manager, or copy " + defaultTLSDir + " from one (and point --tls-dir or $" + tlsDirEnv + " at the copy)"
	if errors.Is(err, fs.ErrPermission) {
		hint = "run shoalctl as a user who may read it, or " + hint
	}
	return fmt.Errorf("--host needs %s in %s: %w; %s", what, path, err, hint)
}

// errNotRunning is the answer when nothing listens at the target.
func errNotRunning(t target) error {
	if t.host != "" {
		return fmt.Errorf("cannot reach shoald at %s: connection refused: is shoald running there, and is that its --listen-addr port?", t)
	}
	return fmt.Errorf("cannot reach shoald at %s: is it running? (start it with `shoald init` or `shoald run`)", t)
}

// unreachable explains why the socket could not be opened.
func unreachable(t target, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errNotRunning(t)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot reach shoald at %s: permission denied (the socket is root's only: run shoalctl as root)", t)
	}
	return fmt.Errorf("cannot reach shoald at %s: %w", t, err)
}

// reacher explains why the connection to a target failed.
type reacher struct {
	target target
	// tlsConfig is the configuration a host target is dialled with.
	tlsConfig *tls.Config
}

// outcome is how a call that failed ended, as far as the client can
// tell; it decides whether another manager may be asked.
type outcome int

const (
	// answered: the shoald answered, maybe with an error of its own.
	answered outcome = iota
	// unreached: the call never reached a shoald, so it did nothing.
	unreached
	// dropped: the connection broke while the call was under way; the
	// shoald may have done it.
	dropped
)

// explain turns a transport failure into a message about the daemon, and
// says how the call ended. Only transport failures: the managers also
// answer Unavailable themselves (no leader yet), and those messages pass
// unchanged like every other error.
func (r reacher) explain(ctx context.Context, err error) (outcome, error) {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return answered, err
	}
	t, msg := r.target, st.Message()
	if t.host != "" {
		if e := tlsError(t, msg); e != nil {
			return unreached, e
		}
		// With TLS 1.3 the client's handshake is over before the server
		// has checked the client's certificate, so a manager refusing it
		// usually shows up as a connection dropped under grpc's first
		// write. Ask the manager again, and read its answer this time.
		if connectionDropped(msg) && r.tlsConfig != nil {
			if alert := probeTLS(ctx, t.host, r.tlsConfig); alert != "" {
				if e := tlsError(t, alert); e != nil {
					return unreached, e
				}
			}
		}
	}
	switch {
	// A stale socket file with nobody listening, or one removed between
	// the check and the dial.
	case strings.Contains(msg, "connection refused"), t.host == "" && strings.Contains(msg, "no such file"):
		return unreached, errNotRunning(t)
	case t.host == "" && strings.Contains(msg, "permission denied"):
		return unreached, unreachable(t, fs.ErrPermission)
	// grpc sends a call only once the connection is up and the server's
	// preface read: failing before that, it went nowhere.
	case strings.Contains(msg, "Error while dialing"), strings.Contains(msg, "error reading server preface"):
		return unreached, fmt.Errorf("cannot reach shoald at %s: %s", t, msg)
	case strings.Contains(msg, "name resolver error"), strings.Contains(msg, "produced zero addresses"):
		return unreached, fmt.Errorf("cannot reach shoald at %s: its name resolves to no address (%s)", t, msg)
	case strings.HasPrefix(msg, "connection error"), strings.Contains(msg, "error reading from server"),
		strings.Contains(msg, "transport is closing"), strings.Contains(msg, "connection closed"):
		return dropped, fmt.Errorf("cannot reach shoald at %s: %s", t, msg)
	}
	return answered, err
}

func connectionDropped(msg string) bool {
	for _, s := range []string{"broken pipe", "connection reset by peer", "error reading server preface", "EOF"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// tlsProbeWait bounds probeTLS: a manager that refuses the certificate
// sends its alert right after the handshake and one that accepts it sends
// its HTTP/2 settings at once, so anything slower is not the answer
// sought, and the user is waiting for an error message.
const tlsProbeWait = 5 * time.Second

// probeTLS makes a TLS connection to addr and reads the server's first
// record; it returns the TLS error if the handshake failed or the server
// answered with an alert, else "".
func probeTLS(ctx context.Context, addr string, cfg *tls.Config) string {
	ctx, cancel := context.WithTimeout(ctx, tlsProbeWait)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer raw.Close()
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return err.Error()
	}
	if deadline, ok := ctx.Deadline(); ok {
		if err := conn.SetReadDeadline(deadline); err != nil {
			return ""
		}
	}
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil && strings.Contains(err.Error(), "remote error: tls:") {
		return err.Error()
	}
	return ""
}

// tlsError explains a failed mutual TLS handshake, which grpc reports as
// an Unavailable transport error, by which side refused whom; nil when msg
// is not about TLS.
func tlsError(t target, msg string) error {
	ca := filepath.Join(t.tlsDir, identity.CAFile)
	cert := filepath.Join(t.tlsDir, identity.CertFile)
	switch {
	// We refused the manager: its certificate is not from our CA, or is
	// not a manager's.
	case strings.Contains(msg, "x509: certificate signed by unknown authority"):
		return fmt.Errorf("cannot reach shoald at %s: its certificate is not signed by the CA in %s: is %s the admin credentials of this cluster?", t, ca, t.tlsDir)
	case strings.Contains(msg, "x509: certificate is valid for"), strings.Contains(msg, "x509: certificate has expired"),
		strings.Contains(msg, "tls: failed to verify certificate"):
		return fmt.Errorf("cannot reach shoald at %s: its certificate is not a valid %s certificate of the CA in %s: %s", t, identity.ManagerServerName, ca, tlsDetail(msg))
	// The manager refused us (TLS alerts as the client sees them).
	case strings.Contains(msg, "tls: unknown certificate authority"), strings.Contains(msg, "tls: bad certificate"),
		strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "tls: certificate revoked"),
		strings.Contains(msg, "tls: expired certificate"), strings.Contains(msg, "tls: unknown certificate"),
		strings.Contains(msg, "tls: access denied"):
		return fmt.Errorf("cannot reach shoald at %s: the manager refused the admin certificate in %s (%s): it is not from this cluster's CA, or no longer valid; copy %s from a manager of this cluster", t, cert, tlsDetail(msg), defaultTLSDir)
	case strings.Contains(msg, "tls:"), strings.Contains(msg, "authentication handshake failed"):
		return fmt.Errorf("cannot reach shoald at %s over TLS: %s (is it shoald listening there?)", t, tlsDetail(msg))
	}
	return nil
}

// tlsDetail is the innermost part of a grpc transport message: what the
// TLS stack said, without grpc's "connection error: desc = ..." wrapping.
func tlsDetail(msg string) string {
	for _, marker := range []string{"x509: ", "remote error: ", "tls: "} {
		if i := strings.Index(msg, marker); i >= 0 {
			return strings.TrimRight(msg[i:], `"`)
		}
	}
	return msg
}

// reachStream explains failures of a stream's messages, where a daemon
// that goes away mid-watch shows up.
type reachStream struct {
	grpc.ClientStream
	reacher reacher
}

func (s reachStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	_, err = s.reacher.explain(s.Context(), err)
	return err
}
