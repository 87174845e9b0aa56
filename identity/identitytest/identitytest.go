// Package identitytest makes cluster CAs and certificates for tests:
// node and admin certificates issued the normal way, and expired ones a
// CA would never issue.
package identitytest

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// Issued is a node's or an operator's credentials with the parsed
// certificate and the identity it names.
type Issued struct {
	Creds identity.Credentials
	Cert  *x509.Certificate
	ID    identity.Identity
}

// Keypair is the credentials as a swappable TLS keypair.
func (i Issued) Keypair(t testing.TB) *identity.Keypair {
	t.Helper()
	kp, err := i.Creds.Keypair()
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// NewCA makes a root CA for clusterID: the stored form and the parsed one.
func NewCA(t testing.TB, clusterID string) (*api.RootCA, *identity.RootCA) {
	t.Helper()
	stored, err := identity.NewRootCA(clusterID)
	if err != nil {
		t.Fatal(err)
	}
	r, err := identity.ParseRootCA(stored)
	if err != nil {
		t.Fatal(err)
	}
	return stored, r
}

// IssueNode makes a key, a CSR and a certificate the normal way.
func IssueNode(t testing.TB, r *identity.RootCA, nodeID string, role api.NodeRole) Issued {
	t.Helper()
	keyPEM, csrPEM, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, cert, err := r.Issue(csrPEM, nodeID, role, 0)
	if err != nil {
		t.Fatal(err)
	}
	return finish(t, r.CertPEM, certPEM, keyPEM, cert)
}

// IssueAdmin makes an operator's credentials the normal way.
func IssueAdmin(t testing.TB, r *identity.RootCA) Issued {
	t.Helper()
	certPEM, keyPEM, err := r.IssueAdmin()
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatal("admin certificate is not PEM")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return finish(t, r.CertPEM, certPEM, keyPEM, cert)
}

// IssueWindow signs, with the stored CA's key, a certificate valid only
// between notBefore and notAfter: an expired one, which the CA's own
// Issue refuses to make. Its names follow the CA's rules for role.
func IssueWindow(t testing.TB, stored *api.RootCA, nodeID string, role identity.Role, notBefore, notAfter time.Time) Issued {
	t.Helper()
	r, err := identity.ParseRootCA(stored)
	if err != nil {
		t.Fatal(err)
	}
	caKey := parseKey(t, stored.GetKeyPem())
	keyPEM, _, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	key := parseKey(t, keyPEM)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject: pkix.Name{
			CommonName:         nodeID,
			OrganizationalUnit: []string{role.OU()},
			Organization:       []string{r.ClusterID()},
		},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{identity.NodeServerName},
	}
	if role == identity.RoleManager {
		tmpl.DNSNames = append(tmpl.DNSNames, identity.ManagerServerName)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, r.Cert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return finish(t, r.CertPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, cert)
}

func parseKey(t testing.TB, keyPEM []byte) *ecdsa.PrivateKey {
	t.Helper()
	block, _ := pem.Decode(keyPEM)
	if block == nil {
		t.Fatal("key is not PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("key is %T, want ECDSA", k)
	}
	return ek
}

func finish(t testing.TB, caPEM, certPEM, keyPEM []byte, cert *x509.Certificate) Issued {
	t.Helper()
	c := identity.Credentials{CACertPEM: caPEM, CertPEM: certPEM, KeyPEM: keyPEM}
	id, err := c.Identity()
	if err != nil {
		t.Fatal(err)
	}
	return Issued{Creds: c, Cert: cert, ID: id}
}

// handshakeTimeout bounds each side of a loopback handshake; it
// measures nothing.
const handshakeTimeout = 20 * time.Second

// Handshake runs one TLS connection over loopback and returns what each
// side saw. The server writes a byte after its handshake so that the
// client learns of a refusal that TLS 1.3 reports only after the client
// believes it is done.
func Handshake(t testing.TB, serverCfg, clientCfg *tls.Config) (srvState tls.ConnectionState, srvErr, cliErr error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(handshakeTimeout))
		s := tls.Server(c, serverCfg)
		if err := s.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = s.Write([]byte{1})
		done <- result{state: s.ConnectionState(), err: err}
	}()
	raw, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	c := tls.Client(raw, clientCfg)
	cliErr = c.Handshake()
	if cliErr == nil {
		_, cliErr = io.ReadFull(c, make([]byte, 1))
	}
	c.Close()
	res := <-done
	return res.state, res.err, cliErr
}
