package ca

import (
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
)

// TestFound: a new cluster's first manager and admin hold certificates of
// its CA with their roles, and both join tokens name that CA.
func TestFound(t *testing.T) {
	desc := &api.NodeDescription{Hostname: "host-1"}
	f, err := Found("n1", "192.0.2.10:4242", desc)
	if err != nil {
		t.Fatal(err)
	}
	root, err := identity.ParseRootCA(f.Cluster.GetRootCa())
	if err != nil {
		t.Fatal(err)
	}
	if root.ClusterID() != f.Cluster.GetId() {
		t.Errorf("CA names cluster %q, the cluster is %q", root.ClusterID(), f.Cluster.GetId())
	}
	for _, tc := range []struct {
		name  string
		creds identity.Credentials
		want  identity.Identity
	}{
		{"manager", f.Credentials, identity.Identity{NodeID: "n1", Role: identity.RoleManager}},
		{"admin", f.Admin, identity.Identity{Role: identity.RoleAdmin}},
	} {
		id, err := tc.creds.Identity()
		if err != nil {
			t.Errorf("%s credentials: %v", tc.name, err)
			continue
		}
		if id.Role != tc.want.Role || (tc.want.NodeID != "" && id.NodeID != tc.want.NodeID) {
			t.Errorf("%s credentials name %v, want %v", tc.name, id, tc.want)
		}
		if _, err := identity.VerifyRootCA(tc.creds.CACertPEM, f.Cluster.GetRootCa().GetDigest()); err != nil {
			t.Errorf("%s credentials carry another CA: %v", tc.name, err)
		}
	}
	for role, tok := range map[string]string{"worker": f.Cluster.GetJoinTokens().GetWorker(), "manager": f.Cluster.GetJoinTokens().GetManager()} {
		parsed, err := identity.ParseToken(tok)
		if err != nil || parsed.Digest != f.Cluster.GetRootCa().GetDigest() {
			t.Errorf("%s token %v does not name the CA (%v)", role, parsed, err)
		}
	}
	if identity.TokenMatches(f.Cluster.GetJoinTokens().GetWorker(), f.Cluster.GetJoinTokens().GetManager()) {
		t.Error("worker and manager tokens are the same")
	}
	leaf, err := f.Credentials.Leaf()
	if err != nil {
		t.Fatal(err)
	}
	// The admin credentials work because the cluster records them.
	adminID, err := f.Admin.Identity()
	if err != nil {
		t.Fatal(err)
	}
	if err := checkAdminCert(f.Cluster, adminID); err != nil {
		t.Errorf("the founding admin certificate is not on record: %v", err)
	}
	n := f.Node
	if n.GetId() != "n1" || n.GetRole() != api.NodeRole_NODE_ROLE_MANAGER || n.GetSpec().GetDesiredRole() != api.NodeRole_NODE_ROLE_MANAGER ||
		n.GetManagerStatus().GetRaftAddr() != "192.0.2.10:4242" || n.GetDescription() != desc ||
		n.GetCertificate().GetSerial() != identity.SerialString(leaf) {
		t.Errorf("first node = %v", n)
	}
}
