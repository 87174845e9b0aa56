package dispatcher

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/identity"
	"github.com/shoal-project/shoal/identity/identitytest"
	"github.com/shoal-project/shoal/manager/ca"
	"github.com/shoal-project/shoal/manager/store"
)

// TestHeartbeatAsksForRenewal: during a CA rotation the heartbeat answer
// asks a node to renew until its certificate record shows the new root
// and the cluster's trust; that is what triggers the daemon's renewal.
func TestHeartbeatAsksForRenewal(t *testing.T) {
	r := newRaft(t)
	stored, root := identitytest.NewCA(t, "c1")
	w := node("w1")
	w.Certificate = identity.CertificateRecord(identitytest.IssueNode(t, root, "w1", api.NodeRole_NODE_ROLE_WORKER).Cert, api.NodeRole_NODE_ROLE_WORKER)
	propose(t, r, store.Create(&api.Cluster{Id: "c1", RootCa: stored}), store.Create(w))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "w1", &api.NodeDescription{Hostname: "w1"})
	ctx := context.Background()
	renew := func() bool {
		t.Helper()
		resp, err := c.Heartbeat(ctx, &api.HeartbeatRequest{SessionId: sid})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetRenewCertificate()
	}
	if renew() {
		t.Fatal("asked to renew with no rotation")
	}
	newRoot, err := ca.StartRotation(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if !renew() {
		t.Fatal("not asked to renew during a rotation")
	}
	// As the CA records a renewal by the new root.
	var cl *api.Cluster
	upd := proto.Clone(storedNode(r, "w1")).(*api.Node)
	r.Store().View(func(tx store.ReadTx) { cl = tx.Cluster() })
	upd.Certificate.Issuer, upd.Certificate.Trust = newRoot.GetDigest(), ca.TrustDigest(cl)
	propose(t, r, store.Update(upd))
	if renew() {
		t.Fatal("asked again after renewing by the new root")
	}
}
