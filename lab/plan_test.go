package lab

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	type want struct {
		name, addr string
		role       Role
	}
	tests := []struct {
		name     string
		cfg      Config
		gateway  string
		nodes    []want
		errMatch string
	}{
		{
			name:    "default is one manager",
			cfg:     Config{Managers: 1},
			gateway: "10.213.0.1/24",
			nodes:   []want{{"manager1", "10.213.0.2", RoleManager}},
		},
		{
			name:    "managers then workers",
			cfg:     Config{Managers: 3, Workers: 2},
			gateway: "10.213.0.1/24",
			nodes: []want{
				{"manager1", "10.213.0.2", RoleManager},
				{"manager2", "10.213.0.3", RoleManager},
				{"manager3", "10.213.0.4", RoleManager},
				{"worker1", "10.213.0.5", RoleWorker},
				{"worker2", "10.213.0.6", RoleWorker},
			},
		},
		{
			name:    "subnet with host bits is masked",
			cfg:     Config{Managers: 1, Workers: 1, Subnet: netip.MustParsePrefix("192.168.77.77/29")},
			gateway: "192.168.77.73/29",
			nodes: []want{
				{"manager1", "192.168.77.74", RoleManager},
				{"worker1", "192.168.77.75", RoleWorker},
			},
		},
		{
			name:    "a /30 holds the bridge and one node",
			cfg:     Config{Managers: 1, Subnet: netip.MustParsePrefix("10.9.0.0/30")},
			gateway: "10.9.0.1/30",
			nodes:   []want{{"manager1", "10.9.0.2", RoleManager}},
		},
		{
			name:    "a /29 holds five nodes",
			cfg:     Config{Managers: 1, Workers: 4, Subnet: netip.MustParsePrefix("10.9.0.0/29")},
			gateway: "10.9.0.1/29",
			nodes: []want{
				{"manager1", "10.9.0.2", RoleManager},
				{"worker1", "10.9.0.3", RoleWorker},
				{"worker2", "10.9.0.4", RoleWorker},
				{"worker3", "10.9.0.5", RoleWorker},
				{"worker4", "10.9.0.6", RoleWorker},
			},
		},
		{name: "no manager", cfg: Config{Managers: 0, Workers: 2}, errMatch: "at least one manager"},
		{name: "negative managers", cfg: Config{Managers: -1}, errMatch: "at least one manager"},
		{name: "negative workers", cfg: Config{Managers: 1, Workers: -1}, errMatch: "cannot be negative"},
		{name: "a /30 is too small for two", cfg: Config{Managers: 1, Workers: 1, Subnet: netip.MustParsePrefix("10.9.0.0/30")}, errMatch: "too small for 2 nodes (it has room for 1)"},
		{name: "a /29 is too small for six", cfg: Config{Managers: 3, Workers: 3, Subnet: netip.MustParsePrefix("10.9.0.0/29")}, errMatch: "too small for 6 nodes"},
		{name: "a /31 has no room", cfg: Config{Managers: 1, Subnet: netip.MustParsePrefix("10.9.0.0/31")}, errMatch: "too small"},
		{name: "a /32 has no room", cfg: Config{Managers: 1, Subnet: netip.MustParsePrefix("10.9.0.1/32")}, errMatch: "too small"},
		{name: "a /24 holds 253", cfg: Config{Managers: 1, Workers: 253}, errMatch: "too small for 254 nodes (it has room for 253)"},
		{name: "IPv6", cfg: Config{Managers: 1, Subnet: netip.MustParsePrefix("fd00::/64")}, errMatch: "IPv4"},
		{name: "name too long for a link", cfg: Config{Managers: 1, Workers: 1000000, Subnet: netip.MustParsePrefix("10.0.0.0/8")}, errMatch: "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			gw, nodes, err := Plan(tt.cfg)
			if failed(t, err, tt.errMatch) {
				return
			}
			if gw.String() != tt.gateway {
				t.Errorf("gateway = %s, want %s", gw, tt.gateway)
			}
			if len(nodes) != len(tt.nodes) {
				t.Fatalf("got %d nodes, want %d: %+v", len(nodes), len(tt.nodes), nodes)
			}
			for i, w := range tt.nodes {
				n := nodes[i]
				if n.Name != w.name || n.Addr.String() != w.addr || n.Role != w.role {
					t.Errorf("node %d = %s %s %s, want %s %s %s", i, n.Name, n.Addr, n.Role, w.name, w.addr, w.role)
				}
			}
		})
	}
}

// failed checks err against the error a case wants (errMatch, a
// substring; "" for none) and says whether the case ends there.
func failed(t *testing.T, err error, errMatch string) bool {
	t.Helper()
	if errMatch != "" {
		if err == nil || !strings.Contains(err.Error(), errMatch) {
			t.Fatalf("err = %v, want one containing %q", err, errMatch)
		}
		return true
	}
	if err != nil {
		t.Fatal(err)
	}
	return false
}

func TestPlanNoManagerIsErrNoManager(t *testing.T) {
	if _, _, err := Plan(Config{}); !errors.Is(err, ErrNoManager) {
		t.Fatalf("err = %v, want ErrNoManager", err)
	}
}

func TestNodeNames(t *testing.T) {
	_, nodes, err := Plan(Config{Managers: 1, Workers: 12})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		got, want string
	}{
		{nodes[0].Namespace, "shoal-lab-manager1"},
		{nodes[0].Link(), "sl-manager1"},
		{nodes[0].DataDir, "/var/lib/shoal-lab/manager1"},
		{nodes[0].Socket, "/run/shoal-lab/manager1.sock"},
		{nodes[0].LogFile(), "/var/lib/shoal-lab/manager1/shoald.log"},
		{nodes[0].AdvertiseAddr(), "10.213.0.2:4242"},
		{nodes[12].Name, "worker12"},
		{nodes[12].Namespace, "shoal-lab-worker12"},
		{nodes[12].Link(), "sl-worker12"},
		{nodes[12].AdvertiseAddr(), "10.213.0.14:4242"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	for _, n := range nodes {
		if len(n.Link()) > maxLinkName {
			t.Errorf("link name %q is longer than %d", n.Link(), maxLinkName)
		}
	}
}

func TestUpRefusesBadConfigWithoutTouchingAnything(t *testing.T) {
	// Plan runs before the root check, so this holds for any user: a bad
	// argument is reported before anything is made.
	_, err := Up(t.Context(), Config{Managers: 0, Workers: 1})
	if !errors.Is(err, ErrNoManager) {
		t.Fatalf("err = %v, want ErrNoManager", err)
	}
}

func TestNodeUnknown(t *testing.T) {
	_, nodes, err := Plan(Config{Managers: 1, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{st: state{Nodes: nodes}}
	if n, err := l.Node("worker1"); err != nil || n.Addr.String() != "10.213.0.3" {
		t.Fatalf("Node(worker1) = %+v, %v", n, err)
	}
	_, err = l.Node("worker7")
	if err == nil || !strings.Contains(err.Error(), `no node "worker7" in the lab: it has manager1, worker1`) {
		t.Fatalf("err = %v", err)
	}
	for _, op := range []func(string) error{l.SetLinkDown, l.SetLinkUp} {
		if err := op("nope"); err == nil || !strings.Contains(err.Error(), `no node "nope"`) {
			t.Errorf("err = %v, want unknown node", err)
		}
	}
	if _, err := l.Exec(t.Context(), "nope", "true"); err == nil || !strings.Contains(err.Error(), `no node "nope"`) {
		t.Errorf("Exec: err = %v, want unknown node", err)
	}
	if _, err := l.Exec(t.Context(), "manager1"); err == nil || !strings.Contains(err.Error(), "no command") {
		t.Errorf("Exec without command: err = %v", err)
	}
}

func TestPlanAdd(t *testing.T) {
	lab := func(subnet string, managers, workers int) state {
		p := netip.MustParsePrefix(subnet)
		gw, nodes, err := Plan(Config{Managers: managers, Workers: workers, Subnet: p})
		if err != nil {
			t.Fatal(err)
		}
		return state{Subnet: p.Masked(), Gateway: gw, Nodes: nodes}
	}
	tests := []struct {
		name              string
		st                state
		managers, workers int
		want              []string // name@address
		errMatch          string
	}{
		{name: "a worker after the last node", st: lab(DefaultSubnet, 3, 1), workers: 1, want: []string{"worker2@10.213.0.6"}},
		{name: "managers are numbered on from the managers", st: lab(DefaultSubnet, 1, 2), managers: 2, workers: 1,
			want: []string{"manager2@10.213.0.5", "manager3@10.213.0.6", "worker3@10.213.0.7"}},
		{name: "a lab without workers gets worker1", st: lab(DefaultSubnet, 1, 0), workers: 1, want: []string{"worker1@10.213.0.3"}},
		// .0 network, .1 bridge, .2-.4 nodes, .5 new, .6 the client's,
		// .7 broadcast.
		{name: "the last free address", st: lab("10.9.0.0/29", 1, 2), workers: 1, want: []string{"worker3@10.9.0.5"}},
		{name: "the client's address stays free", st: lab("10.9.0.0/29", 1, 2), workers: 2, errMatch: "no address left for 2 more nodes; the lab has 3"},
		{name: "nothing to add", st: lab(DefaultSubnet, 1, 0), errMatch: "say how many nodes"},
		{name: "negative", st: lab(DefaultSubnet, 1, 0), workers: -1, errMatch: "cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, err := planAdd(tt.st, tt.managers, tt.workers)
			if failed(t, err, tt.errMatch) {
				return
			}
			var got []string
			for _, n := range nodes {
				got = append(got, n.Name+"@"+n.Addr.String())
				if n.Namespace != NamespacePrefix+n.Name || n.Socket != filepath.Join(RunRoot, n.Name+".sock") {
					t.Errorf("%s: namespace %s, socket %s", n.Name, n.Namespace, n.Socket)
				}
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("planned %v, want %v", got, tt.want)
			}
		})
	}
}

func TestInsertNodeKeepsManagersFirst(t *testing.T) {
	_, nodes, err := Plan(Config{Managers: 2, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	nodes = insertNode(nodes, Node{Name: "manager3", Role: RoleManager})
	nodes = insertNode(nodes, Node{Name: "worker3", Role: RoleWorker})
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	if got := strings.Join(names, " "); got != "manager1 manager2 manager3 worker1 worker2 worker3" {
		t.Errorf("order = %s", got)
	}
}
