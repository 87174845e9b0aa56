package daemon

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/state"
)

// handshakeTimeout bounds a TLS handshake on the cluster port, so a peer
// that connects and says nothing cannot pin a goroutine.
const handshakeTimeout = 10 * time.Second

// clusterListener is the node's one TCP port. Every connection is TLS;
// after the handshake it goes to raft (ALPN shoal-raft, managers only) or
// to the gRPC server (everything else).
type clusterListener struct {
	tcp    net.Listener
	config *tls.Config
	auth   ca.Authorizer
	logger *slog.Logger

	mu   sync.Mutex
	raft *state.StreamLayer

	grpc   chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func listenCluster(addr string, config *tls.Config, auth ca.Authorizer, logger *slog.Logger) (*clusterListener, error) {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &clusterListener{tcp: tcp, config: config, auth: auth, logger: logger,
		grpc: make(chan net.Conn), closed: make(chan struct{})}
	go l.serve()
	return l, nil
}

// setRaft routes raft connections to s from now on.
func (l *clusterListener) setRaft(s *state.StreamLayer) {
	l.mu.Lock()
	l.raft = s
	l.mu.Unlock()
}

func (l *clusterListener) serve() {
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			l.Close()
			return
		}
		go l.handshake(c)
	}
}

func (l *clusterListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.config)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		l.logger.Debug("TLS handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol == identity.ALPNRaft {
		l.mu.Lock()
		r := l.raft
		l.mu.Unlock()
		if r == nil {
			tc.Close()
			return
		}
		if _, err := l.auth.AuthorizeRaft(ctx, cs); err != nil {
			l.logger.Warn("refused raft connection", "remote", c.RemoteAddr(), "err", err)
			tc.Close()
			return
		}
		r.Handoff(tc)
		return
	}
	select {
	case l.grpc <- tc:
	case <-l.closed:
		tc.Close()
	}
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

// Addr implements net.Listener.
func (l *clusterListener) Addr() net.Addr { return l.tcp.Addr() }
