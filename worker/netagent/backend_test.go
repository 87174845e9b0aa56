package netagent

import (
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/shoal-project/shoal/network/lb/ipvs"
	"github.com/shoal-project/shoal/network/lb/lbtest"
)

func TestLBBackend(t *testing.T) {
	tests := []struct {
		configured string
		ipvs       bool
		want       string
	}{
		{LBAuto, true, LBIPVS},
		{LBAuto, false, LBNFTables},
		{LBNFTables, true, LBNFTables},
		// NewKernel then refuses, saying the kernel has no IPVS.
		{LBIPVS, false, LBIPVS},
	}
	for _, tc := range tests {
		probed := false
		got := lbBackend(tc.configured, func() bool { probed = true; return tc.ipvs })
		if got != tc.want {
			t.Errorf("lbBackend(%q) with IPVS %v = %q, want %q", tc.configured, tc.ipvs, got, tc.want)
		}
		if probed != (tc.configured == LBAuto) {
			t.Errorf("lbBackend(%q) probed the kernel: %v", tc.configured, probed)
		}
	}
}

// TestKernelAutoPicksIPVSIffTheFamilyExists resolves auto as the agent does
// and checks it against a listing of every generic netlink family, which
// finds families another way (a dump, not a lookup by name). Asking by
// name first loads ip_vs where the kernel has it, so the listing sees it.
// Where SHOAL_EXPECT_IPVS says what the kernel is, the pick must match:
// the VM tier runs this with SHOAL_EXPECT_IPVS=1, where auto must be IPVS.
func TestKernelAutoPicksIPVSIffTheFamilyExists(t *testing.T) {
	picked := lbBackend(LBAuto, ipvs.Available)
	fams, err := netlink.GenlFamilyList()
	if err != nil {
		t.Fatalf("list generic netlink families: %v", err)
	}
	if !slices.ContainsFunc(fams, func(f *netlink.GenlFamily) bool { return f.Name == "nlctrl" }) {
		t.Fatalf("the family listing lacks nlctrl, which every kernel has: %d families", len(fams))
	}
	has := slices.ContainsFunc(fams, func(f *netlink.GenlFamily) bool { return f.Name == ipvs.GenlFamily })
	t.Logf("auto picked %s; generic netlink family %s listed: %v", picked, ipvs.GenlFamily, has)
	if (picked == LBIPVS) != has {
		t.Errorf("auto picked %s, but the family %s is listed: %v", picked, ipvs.GenlFamily, has)
	}
	if want, set := lbtest.ExpectIPVS(); set && (picked == LBIPVS) != want {
		t.Errorf("auto picked %s, but %s=%v says the kernel has IPVS: %v", picked, lbtest.ExpectIPVSEnv, map[bool]int{false: 0, true: 1}[want], want)
	}
}
