package identity_test

import (
	"bytes"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
)

// TestTrustSwap: listeners and dialers made with a Trust use the roots it
// holds at each handshake, in both directions.
func TestTrustSwap(t *testing.T) {
	_, oldRoot := identitytest.NewCA(t, "c1")
	_, newRoot := identitytest.NewCA(t, "c1")
	server := identitytest.IssueNode(t, newRoot, "m1", api.NodeRole_NODE_ROLE_MANAGER)
	client := identitytest.IssueNode(t, newRoot, "w1", api.NodeRole_NODE_ROLE_WORKER)
	srvTrust, err := identity.NewTrust(oldRoot.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	cliTrust, err := identity.NewTrust(oldRoot.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	srvCfg := identity.ServerConfigTrust(server.Keypair(t), srvTrust)
	cliCfg := identity.ClientConfigTrust(client.Keypair(t), cliTrust, identity.ManagerServerName, identity.ALPNGRPC)

	if _, _, cliErr := identitytest.Handshake(t, srvCfg, cliCfg); cliErr == nil {
		t.Fatal("a client trusting only the old root accepted a server of the new one")
	}
	if err := cliTrust.Set(append(bytes.Clone(oldRoot.CertPEM), newRoot.CertPEM...)); err != nil {
		t.Fatal(err)
	}
	if _, srvErr, _ := identitytest.Handshake(t, srvCfg, cliCfg); srvErr == nil {
		t.Fatal("a server trusting only the old root accepted a client of the new one")
	}
	if err := srvTrust.Set(newRoot.CertPEM); err != nil {
		t.Fatal(err)
	}
	st, srvErr, cliErr := identitytest.Handshake(t, srvCfg, cliCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("both trusting the new root: server %v, client %v", srvErr, cliErr)
	}
	if id, err := identity.IdentityFromState(st); err != nil || id.NodeID != "w1" {
		t.Fatalf("server saw %v, %v; want w1 from a verified chain", id, err)
	}
	// Wrong server name: refused as ClientConfig refuses it.
	wrongName := identity.ClientConfigTrust(client.Keypair(t), cliTrust, "elsewhere", identity.ALPNGRPC)
	if _, _, cliErr := identitytest.Handshake(t, srvCfg, wrongName); cliErr == nil {
		t.Fatal("ClientConfigTrust accepted a server under another name")
	}
}

func TestTrustSetRefuses(t *testing.T) {
	_, root := identitytest.NewCA(t, "c1")
	leaf := identitytest.IssueNode(t, root, "w1", api.NodeRole_NODE_ROLE_WORKER)
	tr, err := identity.NewTrust(root.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, want string
		bundle     []byte
	}{
		{"empty", "at least one", nil},
		{"a key", "unexpected PEM block", leaf.Creds.KeyPEM},
		{"not a CA", "is not a CA", leaf.Creds.CertPEM},
	} {
		if err := tr.Set(tc.bundle); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	if !bytes.Equal(tr.PEM(), root.CertPEM) {
		t.Error("a refused Set changed the trust")
	}
}
