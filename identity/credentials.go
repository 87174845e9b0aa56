package identity

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Files in a credentials directory.
const (
	CAFile   = "ca.pem"
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
	// stagedSuffix marks a file written in full but not yet renamed into
	// place (see SaveCredentials).
	stagedSuffix = ".new"
)

// renewBefore: a certificate this close to expiry is renewed whatever its
// lifetime, so that short test certificates and clock jumps do not leave a
// node with an expired one.
const renewBefore = time.Hour

// Credentials are what a node (or an operator's shoalctl) keeps on disk:
// the cluster CA, its certificate and its key, all PEM. CACertPEM may hold
// several CA certificates: during a CA rotation, the old and the new root.
type Credentials struct {
	CACertPEM []byte
	CertPEM   []byte
	KeyPEM    []byte
}

// TLSCertificate is the certificate and key for crypto/tls, with Leaf set.
// The chain ends with the CA certificate so that a joining node, which
// knows only the CA's digest, can check it (see JoinConfig).
func (c Credentials) TLSCertificate() (tls.Certificate, error) {
	chain := append(append([]byte{}, c.CertPEM...), '\n')
	chain = append(chain, c.CACertPEM...)
	cert, err := tls.X509KeyPair(chain, c.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("load certificate and key: %w", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Errorf("parse certificate: %w", err)
		}
	}
	return cert, nil
}

// Leaf is the parsed certificate.
func (c Credentials) Leaf() (*x509.Certificate, error) {
	cert, err := ParseCertificatePEM(c.CertPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	return cert, nil
}

// Pool is a pool holding the cluster's CAs.
func (c Credentials) Pool() (*x509.CertPool, error) {
	t, err := c.Trust()
	if err != nil {
		return nil, err
	}
	return t.Pool(), nil
}

// Trust is the cluster's CAs as a swappable Trust.
func (c Credentials) Trust() (*Trust, error) {
	return NewTrust(c.CACertPEM)
}

// Identity is who the certificate says its holder is.
func (c Credentials) Identity() (Identity, error) {
	leaf, err := c.Leaf()
	if err != nil {
		return Identity{}, err
	}
	return IdentityOf(leaf)
}

// check makes sure the key belongs to the certificate and the CA signed
// it. Expiry is not checked: the caller decides what an expired
// certificate means (rejoin).
func (c Credentials) check() error {
	cert, err := c.TLSCertificate()
	if err != nil {
		return err
	}
	cas, err := ParseCertificatesPEM(c.CACertPEM)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	for _, ca := range cas {
		if err = cert.Leaf.CheckSignatureFrom(ca); err == nil {
			return nil
		}
	}
	return fmt.Errorf("certificate was not issued by the CA beside it: %w", err)
}

// SaveCredentials writes credentials into dir (made 0700 if missing), each
// file 0600. Each file is replaced atomically; across files, all three are
// staged before any is renamed, key before certificate, so a crash leaves
// either the old pair, the new pair, or a new key with the new certificate
// still staged, which LoadCredentials completes.
func SaveCredentials(dir string, c Credentials) error {
	return SaveCredentialsSealed(dir, c, nil)
}

// KeySealer seals and opens a private key at rest (a manager with
// autolock keeps its node key sealed by the cluster's unlock key).
type KeySealer interface {
	SealKey(keyPEM []byte) []byte
	OpenKey(sealed []byte) ([]byte, error)
}

// sealedKeyType is the PEM type of a sealed private key.
const sealedKeyType = "SHOAL SEALED PRIVATE KEY"

// ErrKeySealed is wrapped by LoadCredentials for a key file that is sealed
// and no sealer (or the wrong one) was given.
var ErrKeySealed = errors.New("the private key is sealed (autolock): it needs the cluster's unlock key")

// SaveCredentialsSealed is SaveCredentials with the key file sealed by s
// (in the clear when s is nil).
func SaveCredentialsSealed(dir string, c Credentials, s KeySealer) error {
	if err := c.check(); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	if s != nil {
		c.KeyPEM = pem.EncodeToMemory(&pem.Block{Type: sealedKeyType, Bytes: s.SealKey(c.KeyPEM)})
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save credentials: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{{CAFile, c.CACertPEM}, {KeyFile, c.KeyPEM}, {CertFile, c.CertPEM}}
	for _, f := range files {
		if err := writeSynced(filepath.Join(dir, f.name+stagedSuffix), f.data); err != nil {
			return fmt.Errorf("save credentials: %w", err)
		}
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.Rename(p+stagedSuffix, p); err != nil {
			return fmt.Errorf("save credentials: %w", err)
		}
	}
	return syncDir(dir)
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	// O_CREATE's mode does not apply to a file left over from a crash.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// LoadCredentials reads what SaveCredentials wrote and checks that the key
// fits the certificate and the CA signed it.
func LoadCredentials(dir string) (Credentials, error) {
	return LoadCredentialsSealed(dir, nil)
}

// KeySealed reports whether the key file in dir is sealed.
func KeySealed(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return false
	}
	block, _ := pem.Decode(b)
	return block != nil && block.Type == sealedKeyType
}

// LoadCredentialsSealed is LoadCredentials for a key file that may be
// sealed: s opens it.
func LoadCredentialsSealed(dir string, s KeySealer) (Credentials, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("load credentials: %w", err)
		}
		return b, nil
	}
	var c Credentials
	var err error
	if c.CACertPEM, err = read(CAFile); err != nil {
		return Credentials{}, err
	}
	if c.KeyPEM, err = read(KeyFile); err != nil {
		return Credentials{}, err
	}
	if block, _ := pem.Decode(c.KeyPEM); block != nil && block.Type == sealedKeyType {
		if s == nil {
			return Credentials{}, fmt.Errorf("load credentials from %s: %w", dir, ErrKeySealed)
		}
		if c.KeyPEM, err = s.OpenKey(block.Bytes); err != nil {
			return Credentials{}, fmt.Errorf("load credentials from %s: %w: %v", dir, ErrKeySealed, err)
		}
	}
	if c.CertPEM, err = read(CertFile); err != nil {
		return Credentials{}, err
	}
	err = c.check()
	if err == nil {
		return c, nil
	}
	// A save interrupted between renaming the key and the certificate:
	// the staged certificate fits the new key.
	staged := filepath.Join(dir, CertFile+stagedSuffix)
	if next, rerr := os.ReadFile(staged); rerr == nil {
		c2 := c
		c2.CertPEM = next
		if c2.check() == nil {
			if rerr := os.Rename(staged, filepath.Join(dir, CertFile)); rerr != nil {
				return Credentials{}, fmt.Errorf("load credentials: finish interrupted save: %w", rerr)
			}
			return c2, nil
		}
	} else if !errors.Is(rerr, os.ErrNotExist) {
		return Credentials{}, fmt.Errorf("load credentials: %w", rerr)
	}
	return Credentials{}, fmt.Errorf("load credentials from %s: %w", dir, err)
}

// NeedsRenewal reports whether a certificate should be renewed now: past
// 2/3 of its lifetime, or expiring within an hour.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	renewAt := cert.NotBefore.Add(life / 3 * 2)
	return !now.Before(renewAt) || cert.NotAfter.Sub(now) < renewBefore
}
