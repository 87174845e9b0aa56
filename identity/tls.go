package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"google.golang.org/grpc/credentials"
)

// ALPN protocols on the cluster port: gRPC, and raft's stream layer.
const (
	ALPNGRPC = "h2"
	ALPNRaft = "shoal-raft"
)

// Keypair is a node's current certificate, swapped atomically on renewal
// so that listeners and dialers pick up the new one at their next
// handshake without restarting. Connections already open keep the
// certificate they were made with. Make one with NewKeypair.
type Keypair struct {
	cert atomic.Pointer[tls.Certificate]
}

// NewKeypair returns a Keypair holding cert.
func NewKeypair(cert tls.Certificate) *Keypair {
	k := &Keypair{}
	k.Set(cert)
	return k
}

// Keypair returns a Keypair holding the credentials' certificate.
func (c Credentials) Keypair() (*Keypair, error) {
	cert, err := c.TLSCertificate()
	if err != nil {
		return nil, err
	}
	return NewKeypair(cert), nil
}

// Set replaces the certificate used from the next handshake on.
func (k *Keypair) Set(cert tls.Certificate) {
	k.cert.Store(&cert)
}

// Leaf is the current certificate, parsed.
func (k *Keypair) Leaf() *x509.Certificate {
	c := k.cert.Load()
	if c.Leaf != nil {
		return c.Leaf
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

func (k *Keypair) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.cert.Load(), nil
}

func (k *Keypair) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return k.cert.Load(), nil
}

// ServerConfig is the cluster port's TLS: TLS 1.3, this node's current
// certificate, and client certificates verified against the cluster CA
// when given (a joining node has none yet; the interceptors decide what
// such a peer may call).
func ServerConfig(kp *Keypair, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: kp.getCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      roots,
		NextProtos:     []string{ALPNGRPC, ALPNRaft},
		// A resumed session carries the certificate of the session it
		// resumes; after a renewal that one is refused. Connections are
		// long-lived, so full handshakes cost nothing worth saving.
		SessionTicketsDisabled: true,
	}
}

// ClientConfig dials a cluster member: TLS 1.3, the server verified
// against the cluster CA under serverName (ManagerServerName to reach a
// manager), and kp presented as client certificate (nil: none, as for a
// joining node). nextProto is ALPNGRPC or ALPNRaft.
func ClientConfig(kp *Keypair, roots *x509.CertPool, serverName, nextProto string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    roots,
		ServerName: serverName,
		NextProtos: []string{nextProto},
	}
	if kp != nil {
		cfg.GetClientCertificate = kp.getClientCertificate
	}
	return cfg
}

// JoinConfig dials a manager before the node trusts any CA: the manager's
// chain must include a CA certificate with the digest from the join token,
// and its certificate must be a manager's, issued by that CA. Only then is
// the token sent. Managers send the CA in their chain (see
// Credentials.TLSCertificate).
func JoinConfig(caDigest string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPNGRPC},
		// Verification is done below against the CA the token names;
		// there is no pool to give crypto/tls yet.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyJoinPeer(cs.PeerCertificates, caDigest)
		},
	}
}

func verifyJoinPeer(chain []*x509.Certificate, caDigest string) error {
	if len(chain) == 0 {
		return errors.New("the manager sent no certificate")
	}
	var root *x509.Certificate
	for _, c := range chain[1:] {
		if c.IsCA && Digest(c.Raw) == caDigest {
			root = c
			break
		}
	}
	if root == nil {
		return fmt.Errorf("the manager's CA is not the one the join token names (%s): the token is for another cluster, or someone is in the way", caDigest)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	_, err := chain[0].Verify(x509.VerifyOptions{
		Roots:     pool,
		DNSName:   ManagerServerName,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("the manager's certificate: %w", err)
	}
	return nil
}

// AcceptedTLSCredentials are gRPC server credentials for connections that
// a listener demultiplexing the cluster port by ALPN has already
// handshaken: they pass the connection through and expose its TLS state,
// so IdentityFromContext works as with credentials.NewTLS. Connections
// that are not TLS are refused.
func AcceptedTLSCredentials() credentials.TransportCredentials { return acceptedTLS{} }

type acceptedTLS struct{}

type tlsConn interface {
	net.Conn
	ConnectionState() tls.ConnectionState
}

func (acceptedTLS) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := conn.(tlsConn)
	if !ok {
		return nil, nil, fmt.Errorf("connection from %s is not TLS", conn.RemoteAddr())
	}
	cs := tc.ConnectionState()
	if !cs.HandshakeComplete {
		return nil, nil, fmt.Errorf("connection from %s has not completed its TLS handshake", conn.RemoteAddr())
	}
	return conn, credentials.TLSInfo{
		State:          cs,
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
	}, nil
}

func (acceptedTLS) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("AcceptedTLSCredentials are for servers only")
}

func (acceptedTLS) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3"}
}

func (a acceptedTLS) Clone() credentials.TransportCredentials { return a }

func (acceptedTLS) OverrideServerName(string) error { return nil }
