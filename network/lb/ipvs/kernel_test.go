package ipvs

import (
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/network/lb/lbtest"
)

func TestNewKernelRefusesWithoutIPVS(t *testing.T) {
	if Available() {
		t.Skip("the kernel has IPVS, so there is no refusal to check")
	}
	b, err := NewKernel("")
	if !errors.Is(err, ErrNoIPVS) {
		if b != nil {
			b.Close()
		}
		t.Fatalf("NewKernel without IPVS: %v, want ErrNoIPVS", err)
	}
}

func TestTimeouts(t *testing.T) {
	tests := []struct {
		name     string
		files    map[string]string // missing: not readable
		tcp, udp time.Duration
	}{
		{"conntrack's defaults", map[string]string{ctTCPEstablished: "432000\n", ctUDPStream: "120\n"}, 432000 * time.Second, 120 * time.Second},
		{"tuned conntrack", map[string]string{ctTCPEstablished: "86400\n", ctUDPStream: "180\n"}, 24 * time.Hour, 180 * time.Second},
		{"nf_conntrack not loaded", nil, defaultCTTCPEstablished, defaultCTUDPStream},
		{"unreadable values", map[string]string{ctTCPEstablished: "a lot\n", ctUDPStream: "0\n"}, defaultCTTCPEstablished, defaultCTUDPStream},
		{"more than IPVS takes", map[string]string{ctTCPEstablished: "4294967295\n", ctUDPStream: "30\n"}, maxIPVSTimeout, 30 * time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := timeouts(func(path string) ([]byte, error) {
				if v, ok := tc.files[path]; ok {
					return []byte(v), nil
				}
				return nil, os.ErrNotExist
			})
			want := ipvs.Config{TimeoutTCP: tc.tcp, TimeoutUDP: tc.udp}
			if got != want {
				t.Errorf("timeouts = %+v, want %+v", got, want)
			}
		})
	}
}

// TestFamilyProbe checks the probe Available uses can say both yes and no,
// and agrees with a listing of every generic netlink family.
func TestFamilyProbe(t *testing.T) {
	if !familyExists("nlctrl") {
		t.Error("familyExists(nlctrl) = false; every kernel has the generic netlink controller")
	}
	if familyExists("shoal-no-such") {
		t.Error("familyExists(shoal-no-such) = true")
	}
	avail := Available()
	fams, err := netlink.GenlFamilyList()
	if err != nil {
		t.Fatalf("list generic netlink families: %v", err)
	}
	listed := slices.ContainsFunc(fams, func(f *netlink.GenlFamily) bool { return f.Name == GenlFamily })
	if avail != listed {
		t.Errorf("Available() = %v, but the family %s listed: %v", avail, GenlFamily, listed)
	}
	if want, set := lbtest.ExpectIPVS(); set && avail != want {
		t.Errorf("Available() = %v, but %s says %v", avail, lbtest.ExpectIPVSEnv, want)
	}
}
