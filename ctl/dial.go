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
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// target says where shoald's Control API is: the local unix socket, or a
// manager over TCP (host) with mutual TLS using the admin credentials in
// tlsDir. cli.target picks it from the flags; no command cares which.
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

// dialTarget makes a client for t. grpc.NewClient does not connect, so
// what can be checked before the first RPC is checked here, with precise
// messages: that the socket exists, or that the admin credentials can be
// read.
func dialTarget(_ context.Context, t target) (api.ControlClient, io.Closer, error) {
	var (
		addr  string
		creds credentials.TransportCredentials
		r     = reacher{target: t}
	)
	if t.host != "" {
		cfg, err := adminTLSConfig(t.tlsDir, time.Now())
		if err != nil {
			return nil, nil, err
		}
		addr = "dns:///" + t.host
		creds = credentials.NewTLS(cfg)
		r.tlsConfig = cfg
	} else {
		path, err := filepath.Abs(t.socket)
		if err != nil {
			return nil, nil, fmt.Errorf("socket path %q: %w", t.socket, err)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, nil, unreachable(t, err)
		}
		addr = "unix://" + path
		// Plain gRPC over the unix socket: the socket is 0600 and owned
		// by root, so the kernel has already authenticated the caller.
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(creds),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return r.explain(ctx, invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, r.explain(ctx, err)
			}
			return reachStream{ClientStream: s, reacher: r}, nil
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to shoald at %s: %w", t, err)
	}
	return api.NewControlClient(conn), conn, nil
}

// defaultPort is shoald's default --listen-addr port, which serves the
// Control API, the dispatcher and raft alike.
var defaultPort = strconv.Itoa(identity.DefaultPort)

// hostAddr is --host as HOST:PORT, the port defaulting to shoald's. It
// is checked before connecting, as arguments are.
func hostAddr(host string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("invalid --host %q: %s", host, why)
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
	switch {
	case name == "", strings.ContainsAny(name, "[]"), strings.Contains(name, ":") && net.ParseIP(name) == nil:
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

// explain turns a transport failure into a message about the daemon.
// Only transport failures: the managers also answer Unavailable themselves
// (no leader yet), and those messages pass unchanged like every other error.
func (r reacher) explain(ctx context.Context, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return err
	}
	t, msg := r.target, st.Message()
	if t.host != "" {
		if e := tlsError(t, msg); e != nil {
			return e
		}
		// With TLS 1.3 the client's handshake is over before the server
		// has checked the client's certificate, so a manager refusing it
		// usually shows up as a connection dropped under grpc's first
		// write. Ask the manager again, and read its answer this time.
		if connectionDropped(msg) && r.tlsConfig != nil {
			if alert := probeTLS(ctx, t.host, r.tlsConfig); alert != "" {
				if e := tlsError(t, alert); e != nil {
					return e
				}
			}
		}
	}
	switch {
	// A stale socket file with nobody listening, or one removed between
	// the check and the dial.
	case strings.Contains(msg, "connection refused"), t.host == "" && strings.Contains(msg, "no such file"):
		return errNotRunning(t)
	case t.host == "" && strings.Contains(msg, "permission denied"):
		return unreachable(t, fs.ErrPermission)
	case strings.HasPrefix(msg, "connection error"), strings.Contains(msg, "error reading from server"),
		strings.Contains(msg, "transport is closing"), strings.Contains(msg, "connection closed"):
		return fmt.Errorf("cannot reach shoald at %s: %s", t, msg)
	}
	return err
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
	return s.reacher.explain(s.Context(), err)
}
