package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	// rootCAValidity: a root is replaced only when an operator rotates it
	// (`shoalctl cluster ca --rotate`), so it must outlive any cluster we
	// expect to run.
	rootCAValidity = 20 * 365 * 24 * time.Hour
	// DefaultNodeValidity is a node certificate's lifetime: short enough
	// that a stolen key stops working within a season, long enough that a
	// node switched off for weeks still renews (at 2/3 of it) on return.
	DefaultNodeValidity = 90 * 24 * time.Hour
	// DefaultAdminValidity is an admin certificate's lifetime unless its
	// issuer asks for another: it has no renewal loop, and a certificate
	// copied to an operator's laptop should stop working by itself within
	// a month even if nobody remembers to revoke it. Issue a fresh one
	// with `shoalctl cluster admin-cert issue` before it runs out.
	DefaultAdminValidity = 30 * 24 * time.Hour
	// MaxAdminValidity bounds what an issuer may ask for.
	MaxAdminValidity = 365 * 24 * time.Hour
	// clockSkew backdates NotBefore so that a node whose clock lags the
	// manager's by a few minutes accepts a certificate issued just now.
	clockSkew = 5 * time.Minute
)

// Server names in certificates. A client dialing a manager verifies
// ManagerServerName; only manager certificates carry it.
const (
	ManagerServerName = "shoal-manager"
	NodeServerName    = "shoal-node"
)

// DefaultPort is every node's cluster port (gRPC and raft, told apart by
// ALPN) unless --listen-addr says otherwise; addresses without a port
// mean it.
const DefaultPort = 4242

const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemCSR         = "CERTIFICATE REQUEST"
)

// RootCA is a parsed cluster CA that can sign certificates.
type RootCA struct {
	// Cert is the CA certificate; CertPEM its PEM form.
	Cert    *x509.Certificate
	CertPEM []byte
	// Digest is "sha256:<hex>" of the DER certificate, as in join tokens.
	Digest string
	key    *ecdsa.PrivateKey
}

// Digest is "sha256:<hex>" of a DER certificate.
func Digest(der []byte) string {
	sum := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// NewRootCA makes a self-signed ECDSA P-256 CA for a new cluster.
func NewRootCA(clusterID string) (*api.RootCA, error) {
	if clusterID == "" {
		return nil, errors.New("create root CA: cluster id is empty")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create root CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "shoal root CA", Organization: []string{clusterID}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(rootCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// Node certificates are leaves: no intermediate CAs.
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("sign root CA: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &api.RootCA{
		CertPem: pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}),
		KeyPem:  keyPEM,
		Digest:  Digest(der),
	}, nil
}

// ParseRootCA checks a stored CA (certificate, key, digest agree) and
// returns a signer.
func ParseRootCA(r *api.RootCA) (*RootCA, error) {
	if r == nil || len(r.GetCertPem()) == 0 || len(r.GetKeyPem()) == 0 {
		return nil, errors.New("root CA: certificate or key missing")
	}
	cert, err := ParseCertificatePEM(r.GetCertPem())
	if err != nil {
		return nil, fmt.Errorf("root CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("root CA certificate is not a CA")
	}
	key, err := parseKeyPEM(r.GetKeyPem())
	if err != nil {
		return nil, fmt.Errorf("root CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("root CA key does not belong to its certificate")
	}
	d := Digest(cert.Raw)
	if r.GetDigest() != "" && r.GetDigest() != d {
		return nil, fmt.Errorf("root CA digest %s does not match its certificate (%s)", r.GetDigest(), d)
	}
	return &RootCA{Cert: cert, CertPEM: r.GetCertPem(), Digest: d, key: key}, nil
}

// ClusterID is the cluster the CA belongs to (its certificate's O).
func (ca *RootCA) ClusterID() string {
	if len(ca.Cert.Subject.Organization) == 0 {
		return ""
	}
	return ca.Cert.Subject.Organization[0]
}

// Pool is a pool holding only this CA.
func (ca *RootCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a node's CSR: the certificate names nodeID and role; the CSR
// contributes only its public key. validity 0 means DefaultNodeValidity.
func (ca *RootCA) Issue(csrPEM []byte, nodeID string, role api.NodeRole, validity time.Duration) ([]byte, *x509.Certificate, error) {
	r := RoleOf(role)
	if r != RoleWorker && r != RoleManager {
		return nil, nil, fmt.Errorf("issue certificate for node %s: role %v is not a node role", nodeID, role)
	}
	if nodeID == "" {
		return nil, nil, errors.New("issue certificate: node id is empty")
	}
	if validity == 0 {
		validity = DefaultNodeValidity
	}
	if validity < 0 {
		return nil, nil, fmt.Errorf("issue certificate for node %s: negative validity %v", nodeID, validity)
	}
	pub, err := csrKey(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	return ca.sign(pub, nodeID, r, now.Add(-clockSkew), now.Add(validity))
}

// DefaultAdminName is the name (CN) of the admin certificate `shoald
// init` writes.
const DefaultAdminName = "admin"

// IssueAdmin makes a key and a client certificate for an operator's
// shoalctl (CN DefaultAdminName, role admin, DefaultAdminValidity). The
// cluster accepts it only once it is recorded (AdminRecord).
func (ca *RootCA) IssueAdmin() (certPEM, keyPEM []byte, err error) {
	keyPEM, csrPEM, err := NewKeyAndCSR()
	if err != nil {
		return nil, nil, err
	}
	certPEM, _, err = ca.IssueAdminCSR(csrPEM, DefaultAdminName, 0)
	if err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// IssueAdminCSR signs an operator's CSR as an admin certificate named
// name; validity 0 means DefaultAdminValidity.
func (ca *RootCA) IssueAdminCSR(csrPEM []byte, name string, validity time.Duration) ([]byte, *x509.Certificate, error) {
	if err := ValidateAdminName(name); err != nil {
		return nil, nil, err
	}
	if validity == 0 {
		validity = DefaultAdminValidity
	}
	if validity < 0 || validity > MaxAdminValidity {
		return nil, nil, fmt.Errorf("admin certificate %s: validity %v: want more than 0 and at most %v", name, validity, MaxAdminValidity)
	}
	pub, err := csrKey(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	return ca.sign(pub, name, RoleAdmin, now.Add(-clockSkew), now.Add(validity))
}

// maxAdminName bounds an admin certificate's name (its CN).
const maxAdminName = 64

// ValidateAdminName checks an admin certificate's name: 1 to 64 letters,
// digits, '.', '_' or '-', so that it prints safely in lists and logs.
func ValidateAdminName(name string) error {
	if name == "" || len(name) > maxAdminName {
		return fmt.Errorf("admin certificate name %q: want 1 to %d characters", name, maxAdminName)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-'
		if !ok {
			return fmt.Errorf("admin certificate name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// AdminRecord is what the cluster records of an admin certificate.
func AdminRecord(cert *x509.Certificate) *api.AdminCertificate {
	return &api.AdminCertificate{
		Serial:   SerialString(cert),
		Name:     cert.Subject.CommonName,
		IssuedAt: timestamppb.New(cert.NotBefore.Add(clockSkew)),
		NotAfter: timestamppb.New(cert.NotAfter),
	}
}

func (ca *RootCA) sign(pub *ecdsa.PublicKey, cn string, role Role, notBefore, notAfter time.Time) ([]byte, *x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			CommonName:         cn,
			OrganizationalUnit: []string{role.OU()},
			Organization:       []string{ca.ClusterID()},
		},
		NotBefore: notBefore,
		NotAfter:  notAfter,
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}
	switch role {
	case RoleAdmin:
		// An operator's certificate is a client only: no server names.
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case RoleManager:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{NodeServerName, ManagerServerName}
	default:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{NodeServerName}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate for %s: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate just signed for %s: %w", cn, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der}), cert, nil
}

// NewKeyAndCSR makes an ECDSA P-256 key and a CSR for it. The CSR's
// subject is empty: the CA decides every name in the certificate.
func NewKeyAndCSR() (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("create node key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: pemCSR, Bytes: der}), nil
}

// csrKey checks a CSR (PEM, P-256 ECDSA key, valid self-signature) and
// returns its key.
func csrKey(csrPEM []byte) (*ecdsa.PublicKey, error) {
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != pemCSR {
		return nil, errors.New("CSR: want one PEM block of type CERTIFICATE REQUEST")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("CSR: unexpected data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CSR: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("CSR: key is %s, want ECDSA P-256", keyName(csr.PublicKey))
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("CSR: bad signature (the request was not signed by its key): %w", err)
	}
	return pub, nil
}

func keyName(k any) string {
	switch k := k.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case nil:
		return "unknown"
	}
	return fmt.Sprintf("%T", k)
}

// VerifyRootCA is what a joining node does with the CA certificate it
// downloaded: accept it only if its digest is the one in its join token.
func VerifyRootCA(certPEM []byte, digest string) (*x509.Certificate, error) {
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate from the manager: %w", err)
	}
	if got := Digest(cert.Raw); got != digest {
		return nil, fmt.Errorf("CA certificate from the manager has digest %s, but the join token names %s: the token is for another cluster, or someone is in the way", got, digest)
	}
	if !cert.IsCA {
		return nil, errors.New("CA certificate from the manager is not a CA")
	}
	return cert, nil
}

// SerialString is a certificate's serial as the store records it (hex).
func SerialString(cert *x509.Certificate) string { return cert.SerialNumber.Text(16) }

// CertificateRecord is what a node object records of its certificate.
func CertificateRecord(cert *x509.Certificate, role api.NodeRole) *api.NodeCertificate {
	return &api.NodeCertificate{
		Serial:    SerialString(cert),
		Role:      role,
		NotAfter:  timestamppb.New(cert.NotAfter),
		NotBefore: timestamppb.New(cert.NotBefore),
	}
}

func newSerial() (*big.Int, error) {
	// 128 random bits: unguessable and, in practice, unique.
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	// A zero serial is not allowed by RFC 5280.
	return s.Add(s, big.NewInt(1)), nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

func parseKeyPEM(b []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if ek, eerr := x509.ParseECPrivateKey(block.Bytes); eerr == nil {
			return ek, nil
		}
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ECDSA", k)
	}
	return ek, nil
}

// ParseCertificatePEM parses one PEM block of type CERTIFICATE.
func ParseCertificatePEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemCertificate {
		return nil, errors.New("want a PEM block of type CERTIFICATE")
	}
	return x509.ParseCertificate(block.Bytes)
}
