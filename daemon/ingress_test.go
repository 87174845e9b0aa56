package daemon

import (
	"strings"
	"testing"
)

func TestIngressNetwork(t *testing.T) {
	for _, tc := range []struct {
		name, subnet string
		vni          uint32
		wantSubnet   string
		wantVNI      uint32
		wantErr      string
	}{
		{name: "", wantSubnet: "10.0.0.0/24", wantVNI: 4096},
		{name: "mesh", subnet: "10.99.0.0/16", vni: 5000, wantSubnet: "10.99.0.0/16", wantVNI: 5000},
		{subnet: "10.99.0.1/16", wantErr: "host bits"},
		{subnet: "nonsense", wantErr: "--ingress-subnet"},
		{name: "Bad_Name", wantErr: "--ingress-name"},
		{vni: 1, wantErr: "VNI"},
	} {
		n, err := ingressNetwork(tc.name, tc.subnet, tc.vni)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ingressNetwork(%q, %q, %d) err = %v, want %q", tc.name, tc.subnet, tc.vni, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ingressNetwork(%q, %q, %d): %v", tc.name, tc.subnet, tc.vni, err)
			continue
		}
		if n.GetSubnet() != tc.wantSubnet || n.GetVni() != tc.wantVNI || !n.GetIngress() || n.GetGateway() == "" {
			t.Errorf("ingressNetwork(%q, %q, %d) = %v", tc.name, tc.subnet, tc.vni, n)
		}
	}
}
