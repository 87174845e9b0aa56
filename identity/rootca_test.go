package identity_test

import (
	. "github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"

	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestNewRootCA(t *testing.T) {
	stored, r := identitytest.NewCA(t, "cluster-1")
	block, _ := pem.Decode(stored.GetCertPem())
	sum := sha256.Sum256(block.Bytes)
	if want := "sha256:" + hex.EncodeToString(sum[:]); stored.GetDigest() != want || r.Digest != want {
		t.Fatalf("digest %q / %q, want %q", stored.GetDigest(), r.Digest, want)
	}
	c := r.Cert
	if !c.IsCA || !c.BasicConstraintsValid || !c.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA %v, valid %v, pathlen0 %v", c.IsCA, c.BasicConstraintsValid, c.MaxPathLenZero)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("CA key is %T, want ECDSA P-256", c.PublicKey)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 19*365*24*time.Hour {
		t.Errorf("CA lifetime %v, want about 20 years", life)
	}
	if r.ClusterID() != "cluster-1" {
		t.Errorf("cluster id %q", r.ClusterID())
	}
	if _, err := NewRootCA(""); err == nil {
		t.Error("CA without a cluster id was made")
	}
	_, other := identitytest.NewCA(t, "cluster-2")
	if r.Digest == other.Digest {
		t.Error("two CAs share a digest")
	}
}

func TestParseRootCARefusesInconsistentCA(t *testing.T) {
	stored, _ := identitytest.NewCA(t, "c1")
	otherStored, _ := identitytest.NewCA(t, "c2")
	tests := []struct {
		name   string
		mutate func(r *api.RootCA)
		want   string
	}{
		{"wrong digest", func(r *api.RootCA) { r.Digest = otherStored.GetDigest() }, "does not match"},
		{"key of another CA", func(r *api.RootCA) { r.KeyPem = otherStored.GetKeyPem() }, "does not belong"},
		{"no key", func(r *api.RootCA) { r.KeyPem = nil }, "missing"},
		{"garbage certificate", func(r *api.RootCA) { r.CertPem = []byte("nope") }, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := proto.Clone(stored).(*api.RootCA)
			tt.mutate(r)
			_, err := ParseRootCA(r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestIssue(t *testing.T) {
	_, r := identitytest.NewCA(t, "cluster-1")
	tests := []struct {
		role    api.NodeRole
		ou      string
		dns     []string
		servers map[string]bool // server name → verifies
	}{
		{api.NodeRole_NODE_ROLE_WORKER, "shoal-worker", []string{"shoal-node"},
			map[string]bool{NodeServerName: true, ManagerServerName: false}},
		{api.NodeRole_NODE_ROLE_MANAGER, "shoal-manager", []string{"shoal-node", "shoal-manager"},
			map[string]bool{NodeServerName: true, ManagerServerName: true}},
	}
	for _, tt := range tests {
		t.Run(tt.role.String(), func(t *testing.T) {
			i := identitytest.IssueNode(t, r, "node-a", tt.role)
			c := i.Cert
			if c.Subject.CommonName != "node-a" || !slices.Equal(c.Subject.OrganizationalUnit, []string{tt.ou}) ||
				!slices.Equal(c.Subject.Organization, []string{"cluster-1"}) {
				t.Errorf("subject %v", c.Subject)
			}
			if !slices.Equal(c.DNSNames, tt.dns) {
				t.Errorf("DNS names %v, want %v", c.DNSNames, tt.dns)
			}
			if !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageClientAuth) || !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
				t.Errorf("ext key usage %v", c.ExtKeyUsage)
			}
			if life := c.NotAfter.Sub(c.NotBefore); life != DefaultNodeValidity+ClockSkew {
				t.Errorf("lifetime %v, want %v", life, DefaultNodeValidity+ClockSkew)
			}
			if c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %s looks too small to be random", c.SerialNumber)
			}
			for name, ok := range tt.servers {
				_, err := c.Verify(x509.VerifyOptions{Roots: r.Pool(), DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
				if (err == nil) != ok {
					t.Errorf("verify as %s: %v, want ok=%v", name, err, ok)
				}
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: r.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify as client: %v", err)
			}
			if i.ID != (Identity{NodeID: "node-a", Role: RoleOf(tt.role), Serial: SerialString(c), ClusterID: "cluster-1"}) {
				t.Errorf("identity %+v", i.ID)
			}
		})
	}
	a, b := identitytest.IssueNode(t, r, "n", api.NodeRole_NODE_ROLE_WORKER), identitytest.IssueNode(t, r, "n", api.NodeRole_NODE_ROLE_WORKER)
	if a.Cert.SerialNumber.Cmp(b.Cert.SerialNumber) == 0 {
		t.Error("two certificates share a serial")
	}
	_, csr, _ := NewKeyAndCSR()
	if _, _, err := r.Issue(csr, "n", api.NodeRole_NODE_ROLE_UNSPECIFIED, 0); err == nil {
		t.Error("certificate identitytest.Issued without a role")
	}
	if _, _, err := r.Issue(csr, "", api.NodeRole_NODE_ROLE_WORKER, 0); err == nil {
		t.Error("certificate identitytest.Issued without a node id")
	}
	_, c, err := r.Issue(csr, "n", api.NodeRole_NODE_ROLE_WORKER, time.Hour)
	if err != nil || c.NotAfter.Sub(c.NotBefore) != time.Hour+ClockSkew {
		t.Errorf("validity of 1h: %v, %v", err, c.NotAfter.Sub(c.NotBefore))
	}
}

func TestIssueAdmin(t *testing.T) {
	_, r := identitytest.NewCA(t, "cluster-1")
	a := identitytest.IssueAdmin(t, r)
	if a.ID.Role != RoleAdmin || a.ID.NodeID != "admin" {
		t.Errorf("identity %+v", a.ID)
	}
	if len(a.Cert.DNSNames) != 0 || slices.Contains(a.Cert.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Errorf("admin certificate can serve: names %v, usage %v", a.Cert.DNSNames, a.Cert.ExtKeyUsage)
	}
	if life := a.Cert.NotAfter.Sub(a.Cert.NotBefore); life < DefaultAdminValidity || life > DefaultAdminValidity+time.Hour {
		t.Errorf("admin lifetime %v, want %v", life, DefaultAdminValidity)
	}
	if _, err := a.Creds.TLSCertificate(); err != nil {
		t.Errorf("admin key and certificate do not pair: %v", err)
	}
}

func csrPEMFor(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestIssueRefusesBadCSR(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	good := csrPEMFor(t, p256)
	block, _ := pem.Decode(good)
	tampered := slices.Clone(block.Bytes)
	tampered[len(tampered)-3] ^= 0xff // inside the signature
	badSig := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered})

	tests := []struct {
		name string
		csr  []byte
		want string
	}{
		{"RSA key", csrPEMFor(t, rsaKey), "want ECDSA P-256"},
		{"P-384 key", csrPEMFor(t, p384), "want ECDSA P-256"},
		{"bad signature", badSig, "signature"},
		{"not PEM", []byte("hello"), "PEM"},
		{"empty", nil, "PEM"},
		{"certificate, not CSR", r.CertPEM, "CERTIFICATE REQUEST"},
		{"trailing data", append(slices.Clone(good), []byte("junk")...), "after the PEM block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := r.Issue(tt.csr, "n1", api.NodeRole_NODE_ROLE_WORKER, 0)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one containing %q", err, tt.want)
			}
		})
	}
	if _, _, err := r.Issue(good, "n1", api.NodeRole_NODE_ROLE_WORKER, 0); err != nil {
		t.Fatalf("good CSR refused: %v", err)
	}
}

func TestVerifyRootCA(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	_, other := identitytest.NewCA(t, "c2")
	if _, err := VerifyRootCA(r.CertPEM, r.Digest); err != nil {
		t.Fatalf("matching CA refused: %v", err)
	}
	if _, err := VerifyRootCA(other.CertPEM, r.Digest); err == nil || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("CA with another digest: %v", err)
	}
	leaf := identitytest.IssueNode(t, r, "n", api.NodeRole_NODE_ROLE_MANAGER)
	if _, err := VerifyRootCA(leaf.Creds.CertPEM, Digest(leaf.Cert.Raw)); err == nil {
		t.Fatal("a leaf was accepted as CA")
	}
}
