package ctl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// testCA is a throwaway certificate authority.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a certificate for cn; dnsNames make it a server
// certificate. It returns the certificate and key as PEM.
func (ca *testCA) issue(t *testing.T, cn string, dnsNames []string, notAfter time.Time) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	usage := x509.ExtKeyUsageClientAuth
	if len(dnsNames) > 0 {
		usage = x509.ExtKeyUsageServerAuth
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}

// adminDir writes the given admin credential files (nil: left out) to a
// new directory.
func adminDir(t *testing.T, caPEM, certPEM, keyPEM []byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range map[string][]byte{identity.CAFile: caPEM, identity.CertFile: certPEM, identity.KeyFile: keyPEM} {
		if b == nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// serveTLS serves controlServer on loopback with mutual TLS as a manager
// does: TLS 1.3, a server certificate for the manager name only (no IP),
// client certificates checked against ca (clientAuth says whether
// required: shoald takes anonymous callers, for joining nodes).
func serveTLS(t *testing.T, ca *testCA, clientAuth tls.ClientAuthType) string {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, "manager-1", []string{identity.ManagerServerName}, time.Now().Add(time.Hour))
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientAuth:   clientAuth,
		ClientCAs:    pool,
	})))
	api.RegisterControlServer(srv, &controlServer{fixture: newFixture()})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String()
}

// runEnv runs shoalctl with the production dialer, a fixed clock and the
// given environment variables only.
func runEnv(t *testing.T, vars map[string]string, args ...string) (string, error) {
	t.Helper()
	return runWith(t, dialEnv(vars, ""), args...)
}

// dialEnv is the production env with a fixed clock, the given environment
// variables only, and its memory of managers in the file memory ("":
// none).
func dialEnv(vars map[string]string, memory string) env {
	e := realEnv()
	e.isTerminal = func(io.Writer) bool { return false }
	e.now = func() time.Time { return fixedNow }
	e.getenv = func(k string) string { return vars[k] }
	e.connect = func(ctx context.Context, ts targets) (api.ControlClient, io.Closer, error) {
		return dialTargets(ctx, ts, managerMemory{path: memory})
	}
	return e
}

func TestDialTLS(t *testing.T) {
	ca := newTestCA(t, "shoal root CA")
	addr := serveTLS(t, ca, tls.RequireAndVerifyClientCert)
	// As shoald does: a joining node has no certificate yet.
	anonOK := serveTLS(t, ca, tls.VerifyClientCertIfGiven)
	adminCert, adminKey := ca.issue(t, "admin", nil, time.Now().Add(time.Hour))
	good := adminDir(t, ca.certPEM, adminCert, adminKey)

	other := newTestCA(t, "another cluster's CA")
	otherCert, otherKey := other.issue(t, "admin", nil, time.Now().Add(time.Hour))
	expiredCert, expiredKey := ca.issue(t, "admin", nil, time.Now().Add(-time.Hour))
	// A socket that does not exist: --host must not look at it.
	noSocket := filepath.Join(t.TempDir(), "shoald.sock")

	tests := []struct {
		name    string
		vars    map[string]string
		args    []string
		wantOut string // a substring
		wantErr string // a substring; "" for success
	}{
		{
			name:    "host flag",
			args:    []string{"--host", addr, "--tls-dir", good, "--socket", noSocket, "node", "ls"},
			wantOut: "nodebravobbb *",
		},
		{
			name:    "environment",
			vars:    map[string]string{hostEnv: addr, tlsDirEnv: good, socketEnv: noSocket},
			args:    []string{"node", "ls", "-q"},
			wantOut: "nodealphaaaa\n",
		},
		{
			name:    "server's message alone over TLS",
			args:    []string{"--host", addr, "--tls-dir", good, "service", "inspect", "nope"},
			wantErr: `service "nope": not found`,
		},
		{
			name:    "manager from another CA",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, other.certPEM, adminCert, adminKey), "node", "ls"},
			wantErr: "its certificate is not signed by the CA in ",
		},
		{
			name:    "admin certificate from another CA",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, ca.certPEM, otherCert, otherKey), "node", "ls"},
			wantErr: "the manager refused the admin certificate in ",
		},
		{
			name:    "admin certificate from another CA, anonymous callers allowed",
			args:    []string{"--host", anonOK, "--tls-dir", adminDir(t, ca.certPEM, otherCert, otherKey), "node", "ls"},
			wantErr: "the manager refused the admin certificate in ",
		},
		{
			name:    "works where anonymous callers are allowed",
			args:    []string{"--host", anonOK, "--tls-dir", good, "node", "ls", "-q"},
			wantOut: "nodealphaaaa\n",
		},
		{
			name:    "missing CA",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, nil, adminCert, adminKey), "node", "ls"},
			wantErr: "ca.pem: no such file or directory; run shoalctl on a manager, or copy /var/lib/shoal/admin from one",
		},
		{
			name:    "missing key",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, ca.certPEM, adminCert, nil), "node", "ls"},
			wantErr: "--host needs the admin key in ",
		},
		{
			name:    "key of another certificate",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, ca.certPEM, adminCert, otherKey), "node", "ls"},
			wantErr: "private key does not match public key",
		},
		{
			name:    "CA file without a certificate",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, []byte("not pem\n"), adminCert, adminKey), "node", "ls"},
			wantErr: "ca.pem: no PEM certificate in it",
		},
		{
			name:    "expired admin certificate",
			args:    []string{"--host", addr, "--tls-dir", adminDir(t, ca.certPEM, expiredCert, expiredKey), "node", "ls"},
			wantErr: "--host needs the admin certificate in ",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runEnv(t, tt.vars, tt.args...)
			msg := ErrorMessage(err)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("error: %s", msg)
			}
			if !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error = %q\nwant it to contain %q", msg, tt.wantErr)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("output = %q, want it to contain %q", out, tt.wantOut)
			}
			t.Logf("error: %s", msg)
		})
	}
}

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestDialTLSNobodyListening(t *testing.T) {
	ca := newTestCA(t, "shoal root CA")
	cert, key := ca.issue(t, "admin", nil, time.Now().Add(time.Hour))
	dir := adminDir(t, ca.certPEM, cert, key)
	addr := deadAddr(t)
	_, err := runEnv(t, nil, "--host", addr, "--tls-dir", dir, "node", "ls")
	want := "cannot reach shoald at " + addr + ": connection refused: is shoald running there, and is that its --listen-addr port?"
	if got := ErrorMessage(err); got != want {
		t.Errorf("error = %q\nwant    %q", got, want)
	}
}

func TestAdminTLSConfig(t *testing.T) {
	ca := newTestCA(t, "shoal root CA")
	cert, key := ca.issue(t, "admin", nil, time.Now().Add(time.Hour))
	cfg, err := adminTLSConfig(adminDir(t, ca.certPEM, cert, key), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion = %x, want TLS 1.3", cfg.MinVersion)
	}
	if cfg.ServerName != "shoal-manager" {
		t.Errorf("ServerName = %q", cfg.ServerName)
	}
	// Sent even when the server names other CAs as acceptable.
	cert0, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{AcceptableCAs: [][]byte{[]byte("another CA")}})
	if err != nil || cert0.Leaf.Subject.CommonName != "admin" {
		t.Errorf("client certificate not the admin's: %v", err)
	}
	if cfg.InsecureSkipVerify || cfg.RootCAs == nil {
		t.Error("server certificate not verified against the CA")
	}
}

func TestHostAddrs(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "192.0.2.10", want: "192.0.2.10:4242"},
		{in: "192.0.2.10:5000", want: "192.0.2.10:5000"},
		{in: "tcp://manager1:4242", want: "manager1:4242"},
		{in: "manager1", want: "manager1:4242"},
		{in: "::1", want: "[::1]:4242"},
		{in: "[2001:db8::1]", want: "[2001:db8::1]:4242"},
		{in: "[2001:db8::1]:99", want: "[2001:db8::1]:99"},
		{in: "manager1:", wantErr: `invalid --host "manager1:": the port must be a number from 1 to 65535`},
		{in: "manager1:http", wantErr: "the port must be a number"},
		{in: "manager1:70000", wantErr: "the port must be a number"},
		{in: ":4242", wantErr: "want HOST[:PORT]"},
		{in: "0]0", wantErr: "want HOST[:PORT]"},
		{in: "a:b:c", wantErr: "want HOST[:PORT]"},
		{in: "unix:///run/shoal/shoald.sock", wantErr: "want HOST[:PORT]"},
		{in: "http://manager1", wantErr: "want HOST[:PORT]"},
		{in: "tcp://", wantErr: "want HOST[:PORT]"},
		{in: "manager 1", wantErr: "want HOST[:PORT]"},
		{in: "", wantErr: `invalid --host "": want HOST[:PORT]`},

		// Lists: in the order given, spaces around entries allowed, a
		// manager named twice kept once.
		{in: "m1,m2,m3", want: "m1:4242 m2:4242 m3:4242"},
		{in: "m3:1, m1 ,tcp://m2", want: "m3:1 m1:4242 m2:4242"},
		{in: "m1,m1:4242,[::1],::1", want: "m1:4242 [::1]:4242"},
		{in: "10.0.0.1,[2001:db8::1]:99", want: "10.0.0.1:4242 [2001:db8::1]:99"},
		{in: "m1,,m3", wantErr: `invalid --host "m1,,m3": entry 2 is empty; want HOST[:PORT] entries separated by commas`},
		{in: "m1,m2,", wantErr: `invalid --host "m1,m2,": entry 3 is empty`},
		{in: ",m1", wantErr: `invalid --host ",m1": entry 1 is empty`},
		{in: " , ", wantErr: "entry 1 is empty"},
		{in: "m1,m2:99999", wantErr: `invalid --host "m2:99999": the port must be a number from 1 to 65535 (entry 2 of "m1,m2:99999")`},
		{in: "m1:x,m2", wantErr: `invalid --host "m1:x": the port must be a number from 1 to 65535 (entry 1 of "m1:x,m2")`},
		{in: "m1,unix:///x.sock", wantErr: `invalid --host "unix:///x.sock": want HOST[:PORT], for example 192.0.2.10:4242 (entry 2 of`},
		{in: "m1;m2", wantErr: `invalid --host "m1;m2": want HOST[:PORT]`},
		{in: "-m1", wantErr: "want HOST[:PORT]"},
		{in: "my_host.example.", want: "my_host.example.:4242"},
	}
	for _, tt := range tests {
		addrs, err := hostAddrs("--host", tt.in)
		got := strings.Join(addrs, " ")
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("hostAddrs(%q) = %q, %v; want error %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("hostAddrs(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestHostResolution(t *testing.T) {
	tests := []struct {
		name    string
		vars    map[string]string
		args    []string
		want    targets
		wantErr string
	}{
		{name: "socket by default", want: targets{{socket: defaultSocket}}},
		{name: "host flag, default credentials", args: []string{"--host", "192.0.2.10"}, want: targets{{host: "192.0.2.10:4242", tlsDir: defaultTLSDir}}},
		{name: "host flag ignores socket", vars: map[string]string{socketEnv: "/tmp/env.sock"}, args: []string{"-H", "m1:1", "--socket", "/tmp/x.sock"}, want: targets{{host: "m1:1", tlsDir: defaultTLSDir}}},
		{name: "host from environment", vars: map[string]string{hostEnv: "m1", tlsDirEnv: "/etc/shoal/admin"}, want: targets{{host: "m1:4242", tlsDir: "/etc/shoal/admin"}}},
		{name: "flags beat environment", vars: map[string]string{hostEnv: "m1", tlsDirEnv: "/etc/shoal/admin"}, args: []string{"--host", "m2", "--tls-dir", "/root/admin"}, want: targets{{host: "m2:4242", tlsDir: "/root/admin"}}},
		{name: "several hosts, in order", args: []string{"--host", "m2,m1:99,m3", "--tls-dir", "/a"},
			want: targets{{host: "m2:4242", tlsDir: "/a"}, {host: "m1:99", tlsDir: "/a"}, {host: "m3:4242", tlsDir: "/a"}}},
		{name: "several hosts from environment", vars: map[string]string{hostEnv: "m1, m2"},
			want: targets{{host: "m1:4242", tlsDir: defaultTLSDir}, {host: "m2:4242", tlsDir: defaultTLSDir}}},
		{name: "bad entry in the flag", args: []string{"--host", "m1,m2:0"}, wantErr: `invalid --host "m2:0": the port must be a number from 1 to 65535 (entry 2 of "m1,m2:0")`},
		{name: "bad entry in the environment", vars: map[string]string{hostEnv: "m1,,m2"}, wantErr: `invalid $SHOAL_HOST "m1,,m2": entry 2 is empty`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			e := testEnv(f)
			var got targets
			e.connect = func(_ context.Context, ts targets) (api.ControlClient, io.Closer, error) {
				got = ts
				return f, nopCloser{}, nil
			}
			e.getenv = func(k string) string { return tt.vars[k] }
			_, err := runWith(t, e, append(tt.args, "service", "ls", "-q")...)
			if tt.wantErr != "" {
				var ue usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				if f.connects != 0 || got != nil {
					t.Error("connected despite the bad --host")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("dialled %+v, want %+v", got, tt.want)
			}
		})
	}
}
