package daemon

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
)

// listenerFixture is a cluster port with limits, whose gRPC side reads
// every connection until it fails and then closes it, as the gRPC server
// does.
type listenerFixture struct {
	l      *clusterListener
	stored *api.RootCA
	worker identitytest.Issued
	roots  *identity.RootCA
}

func newListenerFixture(t *testing.T, limits listenerLimits) *listenerFixture {
	t.Helper()
	stored, r := identitytest.NewCA(t, "c1")
	m := identitytest.IssueNode(t, r, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	l, err := listenClusterWith("127.0.0.1:0", identity.ServerConfig(m.Keypair(t), r.Pool()), quietLogger(), limits)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	return &listenerFixture{l: l, stored: stored, roots: r, worker: identitytest.IssueNode(t, r, "w1", api.NodeRole_NODE_ROLE_WORKER)}
}

// anonymous opens a TLS connection without a client certificate, as a
// joining node does.
func (f *listenerFixture) anonymous(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", f.l.Addr().String(), identity.JoinConfig(f.stored.GetDigest()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (f *listenerFixture) member(t *testing.T) *tls.Conn {
	t.Helper()
	c, err := tls.Dial("tcp", f.l.Addr().String(), identity.ClientConfig(f.worker.Keypair(t), f.roots.Pool(), identity.ManagerServerName, identity.ALPNGRPC))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rawTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClusterPortCapsAnonymousConnections: connections without a
// certificate are capped; members with one are not counted.
func TestClusterPortCapsAnonymousConnections(t *testing.T) {
	f := newListenerFixture(t, listenerLimits{handshakes: 16, anonymous: 2, handshakeTimeout: time.Minute, idle: time.Hour})
	a1, a2 := f.anonymous(t), f.anonymous(t)
	time.Sleep(100 * time.Millisecond) // both handed over
	a3 := f.anonymous(t)
	if !closedByPeer(a3, 5*time.Second) {
		t.Error("a third connection without a certificate was kept, over a cap of 2")
	}
	for _, c := range []*tls.Conn{a1, a2, f.member(t)} {
		if closedByPeer(c, 200*time.Millisecond) {
			t.Error("a connection within the cap, or of a member, was closed")
		}
	}
	// A closed one frees its place.
	a1.Close()
	time.Sleep(100 * time.Millisecond)
	if closedByPeer(f.anonymous(t), 200*time.Millisecond) {
		t.Error("no place freed by a closed connection")
	}
}

// TestClusterPortClosesIdleAnonymousConnections: a connection without a
// certificate that says nothing is closed.
func TestClusterPortClosesIdleAnonymousConnections(t *testing.T) {
	f := newListenerFixture(t, listenerLimits{handshakes: 16, anonymous: 16, handshakeTimeout: time.Minute, idle: 200 * time.Millisecond})
	member := f.member(t)
	if !closedByPeer(f.anonymous(t), 5*time.Second) {
		t.Error("an idle connection without a certificate stayed open")
	}
	if closedByPeer(member, 300*time.Millisecond) {
		t.Error("an idle member's connection was closed")
	}
}

// TestClusterPortCapsHandshakes: peers that connect and never finish a
// TLS handshake are capped, then timed out.
func TestClusterPortCapsHandshakes(t *testing.T) {
	f := newListenerFixture(t, listenerLimits{handshakes: 2, anonymous: 16, handshakeTimeout: time.Hour, idle: time.Hour})
	addr := f.l.Addr().String()
	r1, r2 := rawTCP(t, addr), rawTCP(t, addr)
	time.Sleep(100 * time.Millisecond)
	if !closedByPeer(rawTCP(t, addr), 5*time.Second) {
		t.Error("a third silent connection was kept, over a cap of 2 handshakes")
	}
	if closedByPeer(r1, 200*time.Millisecond) || closedByPeer(r2, 10*time.Millisecond) {
		t.Error("a silent connection within the cap was closed before its handshake timed out")
	}
	// Handshakes in progress do not keep members out for longer than
	// the timeout.
	g := newListenerFixture(t, listenerLimits{handshakes: 1, anonymous: 16, handshakeTimeout: 200 * time.Millisecond, idle: time.Hour})
	silent := rawTCP(t, g.l.Addr().String())
	if !closedByPeer(silent, 5*time.Second) {
		t.Error("a silent connection outlived the handshake timeout")
	}
	time.Sleep(100 * time.Millisecond) // its handshake returns its place
	if closedByPeer(g.member(t), 200*time.Millisecond) {
		t.Error("a member was refused after the silent peer timed out")
	}
}
