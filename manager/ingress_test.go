package manager

import (
	"context"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/manager/store"
)

func TestIngressCheck(t *testing.T) {
	for _, tc := range []struct {
		in      Ingress
		wantErr string
	}{
		{in: Ingress{}},
		{in: Ingress{Name: "mesh", Subnet: "10.99.0.0/16", VNI: 5000}},
		{in: Ingress{Subnet: "10.99.0.1/16"}, wantErr: "host bits"},
		{in: Ingress{Subnet: "nonsense"}, wantErr: "--ingress-subnet"},
		{in: Ingress{Name: "Bad_Name"}, wantErr: "--ingress-name"},
		{in: Ingress{VNI: 1}, wantErr: "VNI"},
	} {
		err := tc.in.Check()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%+v.Check() = %v, want %q", tc.in, err, tc.wantErr)
		}
	}
}

// TestInitCreatesIngress checks that a new cluster has its ingress
// network: the defaults, or what was asked for.
func TestInitCreatesIngress(t *testing.T) {
	for _, tc := range []struct {
		in         Ingress
		wantName   string
		wantSubnet string
		wantVNI    uint32
	}{
		{in: Ingress{}, wantName: "ingress", wantSubnet: "10.0.0.0/24", wantVNI: 4096},
		{in: Ingress{Name: "mesh", Subnet: "10.99.0.0/16", VNI: 5000}, wantName: "mesh", wantSubnet: "10.99.0.0/16", wantVNI: 5000},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), await.Settle)
		m, err := Init(ctx, testConfig(t.TempDir()), nil, &api.Node{Id: selfID}, tc.in)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		var nets []*api.Network
		m.State().Store().View(func(tx store.ReadTx) { nets = tx.Networks() })
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		if len(nets) != 1 {
			t.Fatalf("Init(%+v) stored networks %v, want one", tc.in, nets)
		}
		n := nets[0]
		if n.GetSpec().GetName() != tc.wantName || n.GetSubnet() != tc.wantSubnet || n.GetVni() != tc.wantVNI || !n.GetIngress() || n.GetGateway() == "" {
			t.Errorf("Init(%+v) stored %v", tc.in, n)
		}
	}
	if _, err := Init(context.Background(), testConfig(t.TempDir()), nil, &api.Node{Id: selfID}, Ingress{VNI: 1}); err == nil || !strings.Contains(err.Error(), "VNI") {
		t.Errorf("Init with VNI 1: %v, want it refused", err)
	}
}
