package state

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// RaftALPN is the TLS application protocol that marks a connection as raft
// traffic on the cluster port; everything else there is gRPC.
const RaftALPN = "shoal-raft"

// Raft transport settings. A small pool suffices for a handful of
// managers; the timeout bounds a stuck append to a dead peer.
const (
	transportPool    = 3
	transportTimeout = 5 * time.Second
)

// StreamLayer carries raft over mutually authenticated TLS on the shared
// cluster port: the listener hands it the connections whose ALPN is
// RaftALPN (after checking the peer is a manager), and it dials peers
// with RaftALPN and the node's certificate.
type StreamLayer struct {
	addr   net.Addr
	dialer func(ctx context.Context, addr string) (net.Conn, error)

	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

// NewStreamLayer returns a stream layer whose address is advertise and
// which dials with tlsConfig (its NextProtos is set to RaftALPN).
func NewStreamLayer(advertise net.Addr, tlsConfig *tls.Config) *StreamLayer {
	cfg := tlsConfig.Clone()
	cfg.NextProtos = []string{RaftALPN}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: transportTimeout}, Config: cfg}
	return &StreamLayer{
		addr:   advertise,
		dialer: func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		conns:  make(chan net.Conn),
		closed: make(chan struct{}),
	}
}

// Handoff gives the stream layer an accepted raft connection. It blocks
// until raft takes it or the layer closes (then the connection is closed).
func (s *StreamLayer) Handoff(c net.Conn) {
	select {
	case s.conns <- c:
	case <-s.closed:
		c.Close()
	}
}

// Accept implements net.Listener for raft.
func (s *StreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (s *StreamLayer) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

// Addr implements net.Listener: the advertised address peers dial.
func (s *StreamLayer) Addr() net.Addr { return s.addr }

// Dial implements raft.StreamLayer.
func (s *StreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := s.dialer(ctx, string(address))
	if err != nil {
		return nil, fmt.Errorf("dial raft peer %s: %w", address, err)
	}
	if tc, ok := c.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != RaftALPN {
		c.Close()
		return nil, fmt.Errorf("dial raft peer %s: it does not speak %s", address, RaftALPN)
	}
	return c, nil
}

// NewNetworkTransport wraps a stream layer in raft's transport.
func NewNetworkTransport(s *StreamLayer, logOutput io.Writer) raft.Transport {
	if logOutput == nil {
		logOutput = io.Discard
	}
	return raft.NewNetworkTransport(s, transportPool, transportTimeout, logOutput)
}

var _ raft.StreamLayer = (*StreamLayer)(nil)
