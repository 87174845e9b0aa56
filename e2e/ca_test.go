package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// TestAdminCertificates: an operator issues an admin certificate for a
// colleague, who uses it from elsewhere, and revokes it: it is refused
// from the next call on, and the founding admin certificate still works.
func TestAdminCertificates(t *testing.T) {
	c := newLabCluster(t, 1, 1)
	c.logsOnFailure(t)
	m := c.node(t, "manager1")
	addr := m.AdvertiseAddr()
	dir := filepath.Join(t.TempDir(), "alice")

	c.ctl(t, "manager1", "cluster", "admin-cert", "issue", "--out", dir, "alice")
	if out, err := c.run("shoalctl", "--host", addr, "--tls-dir", dir, "node", "ls"); err != nil {
		t.Fatalf("node ls with alice's certificate: %v\n%s", err, out)
	}
	if out := c.ctl(t, "manager1", "cluster", "admin-cert", "ls"); !strings.Contains(out, "alice") || !strings.Contains(out, "admin") {
		t.Errorf("admin-cert ls lacks alice or admin:\n%s", out)
	}
	c.ctl(t, "manager1", "cluster", "admin-cert", "revoke", "alice")
	out, err := c.run("shoalctl", "--host", addr, "--tls-dir", dir, "node", "ls")
	if err == nil || !strings.Contains(out, "revoked") {
		t.Fatalf("node ls with a revoked certificate: %v\n%s", err, out)
	}
	if out, err := c.run("shoalctl", "--host", addr, "--tls-dir", filepath.Join(m.DataDir, "admin"), "node", "ls"); err != nil {
		t.Fatalf("the founding admin certificate stopped working: %v\n%s", err, out)
	}
}

// TestCARotation: the operator rotates the root CA of a running cluster;
// every node ends with a certificate of the new root and trusts it alone,
// the nodes stay ready, and a certificate of the old root is refused.
func TestCARotation(t *testing.T) {
	c := newLabCluster(t, 1, 1)
	c.logsOnFailure(t)
	m, w := c.node(t, "manager1"), c.node(t, "worker1")
	addr := m.AdvertiseAddr()

	// The worker's credentials before: of the old root.
	oldDir := t.TempDir()
	for _, f := range []string{identity.CAFile, identity.CertFile, identity.KeyFile} {
		b, err := os.ReadFile(filepath.Join(credentialsDir(w), f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(oldDir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	oldRoot := rootDigest(t, c)

	c.ctl(t, "manager1", "cluster", "ca", "--rotate")
	tc.Eventually(t, 2*time.Minute, "the rotation done", func() (bool, string) {
		out := c.ctl(t, "manager1", "cluster", "ca")
		return strings.Contains(out, "Rotation: none") && !strings.Contains(out, oldRoot), out
	})
	newRoot := rootDigest(t, c)
	for _, n := range []string{m.Name, w.Name} {
		dir := credentialsDir(c.node(t, n))
		tc.Eventually(t, time.Minute, n+" trusts the new root alone", func() (bool, string) {
			creds, err := identity.LoadCredentials(dir)
			if err != nil {
				return false, err.Error()
			}
			roots, err := identity.ParseCertificatesPEM(creds.CACertPEM)
			if err != nil {
				return false, err.Error()
			}
			leaf, err := creds.Leaf()
			if err != nil {
				return false, err.Error()
			}
			return len(roots) == 1 && identity.Digest(roots[0].Raw) == newRoot && leaf.CheckSignatureFrom(roots[0]) == nil,
				strings.Repeat("root ", len(roots))
		})
	}
	tc.Eventually(t, time.Minute, "both nodes ready", func() (bool, string) {
		var states []string
		ready := true
		for _, n := range c.clusterNodes(t, "manager1") {
			states = append(states, n.GetStatus().GetState().String())
			ready = ready && n.GetStatus().GetState() == api.NodeState_NODE_STATE_READY
		}
		return ready, strings.Join(states, " ")
	})
	if out := c.ctl(t, "manager1", "cluster", "join-token", "-q", "worker"); !strings.Contains(out, strings.TrimPrefix(newRoot, "sha256:")) {
		t.Errorf("the worker join token does not name the new root:\n%s", out)
	}

	// The worker's old certificate (old root) is refused at the handshake.
	d := api.NewDispatcherClient(dialCluster(t, addr, oldDir))
	ctx, cancel := context.WithTimeout(t.Context(), rpcTimeout)
	defer cancel()
	_, err := d.Heartbeat(ctx, &api.HeartbeatRequest{})
	wantCode(t, "a call with a certificate of the retired root", err, codes.Unavailable)
}

// rootDigest is the cluster's root CA digest, as `cluster ca` prints it.
func rootDigest(t *testing.T, c *labCluster) string {
	t.Helper()
	out := c.ctl(t, "manager1", "cluster", "ca")
	for _, line := range strings.Split(out, "\n") {
		if d, ok := strings.CutPrefix(line, "Root CA: "); ok {
			return strings.TrimSpace(d)
		}
	}
	t.Fatalf("cluster ca printed no root:\n%s", out)
	return ""
}
