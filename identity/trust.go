package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync/atomic"
)

// Trust is the set of root CAs a node accepts, swapped atomically: during
// a CA rotation it holds the old and the new root, and when the rotation
// ends the old root leaves it. Listeners and dialers made with
// ServerConfigTrust and ClientConfigTrust read it at every handshake.
type Trust struct {
	pool atomic.Pointer[x509.CertPool]
	pem  atomic.Pointer[[]byte]
}

// NewTrust returns a Trust holding the CA certificates in bundle (PEM).
func NewTrust(bundle []byte) (*Trust, error) {
	t := &Trust{}
	if err := t.Set(bundle); err != nil {
		return nil, err
	}
	return t, nil
}

// Set replaces the trusted roots with the CA certificates in bundle.
func (t *Trust) Set(bundle []byte) error {
	certs, err := ParseCertificatesPEM(bundle)
	if err != nil {
		return fmt.Errorf("trusted CAs: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		if !c.IsCA {
			return fmt.Errorf("trusted CAs: certificate %s is not a CA", SerialString(c))
		}
		pool.AddCert(c)
	}
	b := bytes.Clone(bundle)
	t.pool.Store(pool)
	t.pem.Store(&b)
	return nil
}

// Pool is the trusted roots now.
func (t *Trust) Pool() *x509.CertPool { return t.pool.Load() }

// PEM is the bundle the trust was last set from.
func (t *Trust) PEM() []byte { return bytes.Clone(*t.pem.Load()) }

// ParseCertificatesPEM parses every CERTIFICATE block of a PEM bundle; it
// needs at least one and refuses blocks of any other type.
func ParseCertificatesPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("unexpected PEM block %q: want CERTIFICATE", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("want at least one PEM block of type CERTIFICATE")
	}
	return out, nil
}

// ServerConfigTrust is ServerConfig with roots read from trust at every
// handshake.
func ServerConfigTrust(kp *Keypair, trust *Trust) *tls.Config {
	base := ServerConfig(kp, trust.Pool())
	cfg := base.Clone()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = trust.Pool()
		return c, nil
	}
	return cfg
}

// ClientConfigTrust is ClientConfig with the server verified against the
// roots trust holds at the handshake. crypto/tls takes a fixed RootCAs,
// so the verification is done here, with the same rules (chain to a
// trusted root, serverName, server usage).
func ClientConfigTrust(kp *Keypair, trust *Trust, serverName, nextProto string) *tls.Config {
	cfg := ClientConfig(kp, nil, serverName, nextProto)
	cfg.RootCAs = nil
	cfg.InsecureSkipVerify = true // verified below, against trust
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("the server sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
			Roots:         trust.Pool(),
			Intermediates: inter,
			DNSName:       serverName,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})
		if err != nil {
			return fmt.Errorf("the server's certificate: %w", err)
		}
		return nil
	}
	return cfg
}
