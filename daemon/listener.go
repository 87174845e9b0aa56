package daemon

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
)

// Limits on the cluster port for peers that have not shown a certificate:
// anyone who can reach the port can open connections, and joining nodes
// legitimately come without a certificate, so neither the handshakes nor
// the certificate-less connections may pile up without bound.
const (
	// handshakeTimeout bounds a TLS handshake, so a peer that connects
	// and says nothing cannot pin a goroutine.
	handshakeTimeout = 10 * time.Second
	// maxHandshakes caps the handshakes in progress: a connection beyond
	// it is closed at once. A handful of nodes joining or reconnecting
	// at the same time stay far below it.
	maxHandshakes = 256
	// maxAnonymous caps the open connections without a client
	// certificate (joining nodes fetching the CA and their certificate).
	maxAnonymous = 64
	// anonymousIdle closes a connection without a client certificate
	// after this long without traffic: a join makes two calls in a row.
	anonymousIdle = 30 * time.Second
)

// clusterListener is the node's one TCP port. Every connection is TLS;
// after the handshake it goes to raft (ALPN shoal-raft, managers only) or
// to the gRPC server (everything else).
type clusterListener struct {
	tcp    net.Listener
	config *tls.Config
	logger *slog.Logger
	limits listenerLimits

	handshakes chan struct{} // a token per handshake in progress
	anonymous  chan struct{} // a token per open connection without a certificate

	mu       sync.Mutex
	raft     *state.StreamLayer
	raftAuth ca.Authorizer
	// raftPeers are the open raft connections, re-checked whenever the
	// store changes (see watchRaftPeers).
	raftPeers map[*raftConn]struct{}

	grpc   chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// listenerLimits bound what peers without a certificate may hold.
type listenerLimits struct {
	handshakes, anonymous  int
	handshakeTimeout, idle time.Duration
}

var defaultLimits = listenerLimits{handshakes: maxHandshakes, anonymous: maxAnonymous, handshakeTimeout: handshakeTimeout, idle: anonymousIdle}

// listenCluster opens the cluster port. Raft connections are refused
// until setRaft and setRaftAuth have been called.
func listenCluster(addr string, config *tls.Config, logger *slog.Logger) (*clusterListener, error) {
	return listenClusterWith(addr, config, logger, defaultLimits)
}

func listenClusterWith(addr string, config *tls.Config, logger *slog.Logger, limits listenerLimits) (*clusterListener, error) {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &clusterListener{tcp: tcp, config: config, logger: logger, limits: limits,
		handshakes: make(chan struct{}, limits.handshakes), anonymous: make(chan struct{}, limits.anonymous),
		raftPeers: map[*raftConn]struct{}{},
		grpc:      make(chan net.Conn), closed: make(chan struct{})}
	go l.serve()
	return l, nil
}

// setRaft routes raft connections to s from now on.
func (l *clusterListener) setRaft(s *state.StreamLayer) {
	l.mu.Lock()
	l.raft = s
	l.mu.Unlock()
}

// setRaftAuth decides from now on who may speak raft, for new connections
// and, at the next recheck, for open ones. Until it is called every raft
// connection is refused (the zero Authorizer fails closed).
func (l *clusterListener) setRaftAuth(a ca.Authorizer) {
	l.mu.Lock()
	l.raftAuth = a
	l.mu.Unlock()
	l.recheckRaftPeers()
}

func (l *clusterListener) serve() {
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			l.Close()
			return
		}
		select {
		case l.handshakes <- struct{}{}:
		default:
			l.logger.Warn("too many TLS handshakes in progress: connection refused", "remote", c.RemoteAddr(), "max", l.limits.handshakes)
			c.Close()
			continue
		}
		go l.handshake(c)
	}
}

func (l *clusterListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.config)
	ctx, cancel := context.WithTimeout(context.Background(), l.limits.handshakeTimeout)
	defer cancel()
	err := tc.HandshakeContext(ctx)
	<-l.handshakes
	if err != nil {
		l.logger.Debug("TLS handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == identity.ALPNRaft {
		l.handoffRaft(ctx, tc, cs)
		return
	}
	var conn net.Conn = tc
	if len(cs.PeerCertificates) == 0 {
		select {
		case l.anonymous <- struct{}{}:
		default:
			l.logger.Warn("too many connections without a certificate: connection refused", "remote", c.RemoteAddr(), "max", l.limits.anonymous)
			tc.Close()
			return
		}
		conn = &anonymousConn{Conn: tc, idle: l.limits.idle, release: func() { <-l.anonymous }}
	}
	select {
	case l.grpc <- conn:
	case <-l.closed:
		conn.Close()
	}
}

func (l *clusterListener) handoffRaft(ctx context.Context, tc *tls.Conn, cs tls.ConnectionState) {
	l.mu.Lock()
	r, auth := l.raft, l.raftAuth
	l.mu.Unlock()
	if r == nil {
		tc.Close()
		return
	}
	id, err := auth.AuthorizeRaft(ctx, cs)
	if err != nil {
		l.logger.Warn("refused raft connection", "remote", tc.RemoteAddr(), "err", err)
		tc.Close()
		return
	}
	rc := &raftConn{Conn: tc, l: l, id: id, cs: cs}
	l.mu.Lock()
	l.raftPeers[rc] = struct{}{}
	l.mu.Unlock()
	r.Handoff(rc)
}

// recheckRaftPeers closes every open raft connection whose peer the
// authorizer now refuses: a manager that was demoted or removed, or whose
// certificate was replaced, is cut off at once rather than when its
// connection happens to end.
func (l *clusterListener) recheckRaftPeers() {
	l.mu.Lock()
	auth := l.raftAuth
	peers := make([]*raftConn, 0, len(l.raftPeers))
	for rc := range l.raftPeers {
		peers = append(peers, rc)
	}
	l.mu.Unlock()
	for _, rc := range peers {
		if _, err := auth.AuthorizeRaft(context.Background(), rc.cs); err != nil {
			l.logger.Warn("closing raft connection of a peer no longer allowed", "node", rc.id.NodeID, "remote", rc.RemoteAddr(), "err", err)
			rc.Close()
		}
	}
}

// watchRaftPeers rechecks the open raft connections after every change
// to st, until ctx ends.
func (l *clusterListener) watchRaftPeers(ctx context.Context, st *store.Store) {
	sub := st.Subscribe()
	defer sub.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Ready():
		}
		changes := sub.Next()
		if store.Affects(changes, func(ev store.Event) bool {
			switch ev.Object.(type) {
			case *api.Node, *api.Cluster:
				return true
			}
			return false
		}) {
			l.recheckRaftPeers()
		}
	}
}

// raftConn is an accepted raft connection and the peer it was let in as.
type raftConn struct {
	net.Conn
	l    *clusterListener
	id   identity.Identity
	cs   tls.ConnectionState
	once sync.Once
}

func (c *raftConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.raftPeers, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

// anonymousConn is a connection without a client certificate: it holds
// one of the listener's anonymous tokens until it closes, and closes
// itself after idle without traffic.
type anonymousConn struct {
	*tls.Conn // the gRPC server reads its ConnectionState
	idle      time.Duration
	release   func()
	once      sync.Once
}

func (c *anonymousConn) Read(b []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(b)
}

func (c *anonymousConn) Write(b []byte) (int, error) {
	c.Conn.SetDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(b)
}

func (c *anonymousConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}

// Accept implements net.Listener for the gRPC server.
func (l *clusterListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.grpc:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *clusterListener) Close() error {
	l.once.Do(func() {
		close(l.closed)
		l.tcp.Close()
	})
	return nil
}

// Addr implements net.Listener: the address the port is bound to.
func (l *clusterListener) Addr() net.Addr { return l.tcp.Addr() }
