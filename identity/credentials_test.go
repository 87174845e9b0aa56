package identity_test

import (
	. "github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"

	"bytes"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestSaveLoadCredentials(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	i := identitytest.IssueNode(t, r, "node-1", api.NodeRole_NODE_ROLE_WORKER)
	dir := filepath.Join(t.TempDir(), "certificates")
	if err := SaveCredentials(dir, i.Creds); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(dir)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v, err %v; want 0700", st.Mode().Perm(), err)
	}
	for _, name := range []string{CAFile, CertFile, KeyFile} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", name, st.Mode().Perm())
		}
	}
	got, err := LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.CACertPEM, i.Creds.CACertPEM) || !bytes.Equal(got.CertPEM, i.Creds.CertPEM) || !bytes.Equal(got.KeyPEM, i.Creds.KeyPEM) {
		t.Fatal("loaded credentials differ from saved ones")
	}
	id, err := got.Identity()
	if err != nil || id != i.ID {
		t.Fatalf("identity %+v, %v; want %+v", id, err, i.ID)
	}
	pool, err := got.Pool()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := i.Cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Fatalf("certificate does not verify against the saved CA: %v", err)
	}
	tc, err := got.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificate) != 2 || !bytes.Equal(tc.Certificate[1], r.Cert.Raw) || tc.Leaf.SerialNumber.Cmp(i.Cert.SerialNumber) != 0 {
		t.Fatalf("TLS chain: %d certificates, leaf %v", len(tc.Certificate), tc.Leaf.SerialNumber)
	}

	// A renewal overwrites, and a file left with loose permissions is
	// tightened.
	if err := os.Chmod(filepath.Join(dir, KeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	next := identitytest.IssueNode(t, r, "node-1", api.NodeRole_NODE_ROLE_MANAGER)
	if err := SaveCredentials(dir, next.Creds); err != nil {
		t.Fatal(err)
	}
	got, err = LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := got.Identity(); id != next.ID {
		t.Fatalf("after overwrite identity %+v, want %+v", id, next.ID)
	}
	if st, _ := os.Stat(filepath.Join(dir, KeyFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode after overwrite %v", st.Mode().Perm())
	}
}

func TestSaveCredentialsRefusesMismatch(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	_, other := identitytest.NewCA(t, "c2")
	a := identitytest.IssueNode(t, r, "a", api.NodeRole_NODE_ROLE_WORKER)
	b := identitytest.IssueNode(t, r, "b", api.NodeRole_NODE_ROLE_WORKER)
	tests := []struct {
		name string
		c    Credentials
	}{
		{"key of another node", Credentials{CACertPEM: r.CertPEM, CertPEM: a.Creds.CertPEM, KeyPEM: b.Creds.KeyPEM}},
		{"CA that did not sign it", Credentials{CACertPEM: other.CertPEM, CertPEM: a.Creds.CertPEM, KeyPEM: a.Creds.KeyPEM}},
		{"empty", Credentials{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := SaveCredentials(dir, tt.c); err == nil {
				t.Fatal("inconsistent credentials saved")
			}
			if _, err := os.Stat(filepath.Join(dir, CertFile)); err == nil {
				t.Fatal("a refused save wrote a file")
			}
		})
	}
}

// TestLoadCredentialsFinishesInterruptedSave simulates a crash after the
// new key was renamed into place but before the new certificate was.
func TestLoadCredentialsFinishesInterruptedSave(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	old := identitytest.IssueNode(t, r, "n", api.NodeRole_NODE_ROLE_WORKER)
	next := identitytest.IssueNode(t, r, "n", api.NodeRole_NODE_ROLE_WORKER)
	dir := t.TempDir()
	if err := SaveCredentials(dir, old.Creds); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), next.Creds.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CertFile+StagedSuffix), next.Creds.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id, _ := got.Identity(); id != next.ID {
		t.Fatalf("identity %+v, want the new certificate %+v", id, next.ID)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, CertFile)); !bytes.Equal(b, next.Creds.CertPEM) {
		t.Fatal("the staged certificate was not moved into place")
	}

	// Without a fitting staged certificate, a mismatch is an error.
	if err := os.WriteFile(filepath.Join(dir, KeyFile), old.Creds.KeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCredentials(dir); err == nil {
		t.Fatal("mismatched key and certificate loaded")
	}
	if _, err := LoadCredentials(t.TempDir()); err == nil {
		t.Fatal("empty dir loaded")
	}
}

func TestNeedsRenewal(t *testing.T) {
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	tests := []struct {
		name string
		life time.Duration
		at   time.Duration // since NotBefore
		want bool
	}{
		{"fresh", 90 * day, 0, false},
		{"half way", 90 * day, 45 * day, false},
		{"just before 2/3", 90 * day, 60*day - time.Minute, false},
		{"at 2/3", 90 * day, 60 * day, true},
		{"expired", 90 * day, 91 * day, true},
		{"short cert, before 2/3, but within an hour of expiry", 70 * time.Minute, 15 * time.Minute, true},
		{"two-hour cert, fresh", 2 * time.Hour, time.Minute, false},
		{"before NotBefore", 90 * day, -time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &x509.Certificate{NotBefore: start, NotAfter: start.Add(tt.life)}
			if got := NeedsRenewal(c, start.Add(tt.at)); got != tt.want {
				t.Fatalf("NeedsRenewal = %v, want %v", got, tt.want)
			}
		})
	}
}

// xorSealer stands for the unlock key's sealer in these tests.
type xorSealer byte

func (x xorSealer) SealKey(p []byte) []byte {
	out := make([]byte, len(p))
	for i, b := range p {
		out[i] = b ^ byte(x)
	}
	return out
}

func (x xorSealer) OpenKey(p []byte) ([]byte, error) {
	out := x.SealKey(p)
	if !bytes.Contains(out, []byte("PRIVATE KEY")) {
		return nil, os.ErrInvalid
	}
	return out, nil
}

func TestSealedKey(t *testing.T) {
	_, r := identitytest.NewCA(t, "c1")
	i := identitytest.IssueNode(t, r, "node-1", api.NodeRole_NODE_ROLE_MANAGER)
	dir := filepath.Join(t.TempDir(), "certificates")
	if err := SaveCredentialsSealed(dir, i.Creds, xorSealer(0x5a)); err != nil {
		t.Fatal(err)
	}
	if !KeySealed(dir) {
		t.Fatal("KeySealed = false after a sealed save")
	}
	b, _ := os.ReadFile(filepath.Join(dir, KeyFile))
	if bytes.Contains(b, i.Creds.KeyPEM[40:80]) {
		t.Fatal("the sealed key file holds the key")
	}
	if _, err := LoadCredentials(dir); !errors.Is(err, ErrKeySealed) {
		t.Fatalf("load without a sealer: %v, want ErrKeySealed", err)
	}
	if _, err := LoadCredentialsSealed(dir, xorSealer(0x33)); !errors.Is(err, ErrKeySealed) {
		t.Fatalf("load with the wrong sealer: %v, want ErrKeySealed", err)
	}
	got, err := LoadCredentialsSealed(dir, xorSealer(0x5a))
	if err != nil || !bytes.Equal(got.KeyPEM, i.Creds.KeyPEM) {
		t.Fatalf("load with the sealer: %v", err)
	}
	if err := SaveCredentials(dir, got); err != nil || KeySealed(dir) {
		t.Fatalf("a plain save left the key sealed (%v)", err)
	}
}
