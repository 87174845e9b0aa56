package ctl

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/golden"
)

const (
	netBackend = "netbackendaaaaaaaaaaaaaaaa"
	netIngress = "netingressbbbbbbbbbbbbbbbb"
	netFront   = "netfrontccccccccccccccccccc"
)

// networkFixture is newFixture with three networks, out of name order.
func networkFixture() *fakeControl {
	f := newFixture()
	f.networks = []*api.Network{
		{
			Id: netIngress, Meta: &api.Meta{Version: 2, CreatedAt: ago(48 * time.Hour)},
			Spec:   &api.NetworkSpec{Name: "ingress"},
			Subnet: "10.0.0.0/24", Gateway: "10.0.0.1", Vni: 4096, Ingress: true,
		},
		{
			Id: netBackend, Meta: &api.Meta{Version: 44, CreatedAt: ago(time.Hour)},
			Spec:   &api.NetworkSpec{Name: "backend", Subnet: "10.20.0.0/24", Gateway: "10.20.0.254", Labels: map[string]string{"tier": "db"}},
			Subnet: "10.20.0.0/24", Gateway: "10.20.0.254", Vni: 4097,
		},
		{
			Id: netFront, Meta: &api.Meta{Version: 45, CreatedAt: ago(time.Minute)},
			Spec:   &api.NetworkSpec{Name: "front", Encrypted: true},
			Subnet: "10.10.1.0/24", Gateway: "10.10.1.1", Vni: 4098,
		},
	}
	return f
}

func TestNetworkOutputGolden(t *testing.T) {
	tests := []struct {
		golden string
		args   []string
	}{
		{"network_ls_table", []string{"network", "ls"}},
		{"network_ls_notrunc", []string{"network", "ls", "--no-trunc"}},
		{"network_ls_quiet", []string{"network", "ls", "-q"}},
		{"network_ls_json", []string{"network", "ls", "--format", "json"}},
		{"network_ls_template", []string{"network", "ls", "--format", "{{.Name}} {{.Subnet}} vni={{.VNI}} ingress={{.Ingress}} encrypted={{.Encrypted}}"}},
		{"network_inspect_json", []string{"network", "inspect", "backend", "netfront"}},
		{"network_inspect_template", []string{"network", "inspect", "--format", "{{.Spec.Name}} {{.Subnet}} {{.Gateway}} {{.Vni}} {{.Spec.Encrypted}} {{json .Spec.Labels}}", "backend", "front", "ingress"}},
		{"network_create", []string{"network", "create", "--subnet", "10.10.5.0/24", "--label", "a=b", "db"}},
		{"network_rm", []string{"network", "rm", "backend", "front"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			out, err := runCLI(t, networkFixture(), tt.args...)
			if err != nil {
				t.Fatalf("shoalctl %s: %v", strings.Join(tt.args, " "), err)
			}
			golden.Check(t, tt.golden, out)
		})
	}
}

func TestNetworkCreateSendsSpec(t *testing.T) {
	f := networkFixture()
	if _, err := runCLI(t, f, "network", "create", "--subnet", "10.30.0.0/24", "--gateway", "10.30.0.9", "--label", "a=b", "--label", "c", "db"); err != nil {
		t.Fatal(err)
	}
	if len(f.networksCreated) != 1 {
		t.Fatalf("CreateNetwork called %d times, want 1", len(f.networksCreated))
	}
	got := f.networksCreated[0]
	if got.GetName() != "db" || got.GetSubnet() != "10.30.0.0/24" || got.GetGateway() != "10.30.0.9" ||
		len(got.GetLabels()) != 2 || got.GetLabels()["a"] != "b" || got.GetLabels()["c"] != "" {
		t.Errorf("spec sent = %v", got)
	}
}

func TestNetworkCreateOptions(t *testing.T) {
	tests := []struct {
		opts []string
		want bool
	}{
		{nil, false},
		{[]string{"--opt", "encrypted"}, true},
		{[]string{"-o", "encrypted"}, true},
		{[]string{"--opt", "encrypted=true"}, true},
		{[]string{"--opt=encrypted=false"}, false},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.opts, " "), func(t *testing.T) {
			f := networkFixture()
			if _, err := runCLI(t, f, append(append([]string{"network", "create"}, tt.opts...), "db")...); err != nil {
				t.Fatal(err)
			}
			if len(f.networksCreated) != 1 {
				t.Fatalf("CreateNetwork called %d times, want 1", len(f.networksCreated))
			}
			if got := f.networksCreated[0].GetEncrypted(); got != tt.want {
				t.Errorf("spec sent has encrypted %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNetworkArgumentErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"create without name", []string{"network", "create"}, "exactly one NAME"},
		{"create two names", []string{"network", "create", "a", "b"}, "exactly one NAME"},
		{"create bad name", []string{"network", "create", "Back_End"}, `invalid network name "Back_End"`},
		{"create bad subnet", []string{"network", "create", "--subnet", "10.20.0.0", "db"}, `invalid --subnet "10.20.0.0"`},
		{"create bad gateway", []string{"network", "create", "--subnet", "10.20.0.0/24", "--gateway", "x", "db"}, `invalid --gateway "x"`},
		{"create gateway alone", []string{"network", "create", "--gateway", "10.20.0.1", "db"}, "--gateway needs --subnet"},
		{"create bad label", []string{"network", "create", "--label", "=v", "db"}, `invalid --label "=v"`},
		{"create unknown option", []string{"network", "create", "--opt", "bogus", "db"}, `unknown --opt "bogus": options are encrypted`},
		{"create unknown option with a value", []string{"network", "create", "-o", "com.docker.network.driver.mtu=1400", "db"}, `unknown --opt "com.docker.network.driver.mtu": options are encrypted`},
		{"create encrypted with a bad value", []string{"network", "create", "--opt", "encrypted=maybe", "db"}, `invalid --opt "encrypted=maybe": want encrypted, encrypted=true or encrypted=false`},
		{"create encrypted with an empty value", []string{"network", "create", "--opt", "encrypted=", "db"}, `invalid --opt "encrypted=": want`},
		{"create option without a key", []string{"network", "create", "--opt", "=true", "db"}, `invalid --opt "=true": want KEY[=VALUE]`},
		{"create option twice", []string{"network", "create", "--opt", "encrypted", "--opt", "encrypted=false", "db"}, "--opt encrypted given twice"},
		{"ls with argument", []string{"network", "ls", "x"}, "takes no arguments"},
		{"ls bad template", []string{"network", "ls", "--format", "{{"}, "invalid --format template"},
		{"inspect without name", []string{"network", "inspect"}, "at least one NETWORK"},
		{"inspect bad template", []string{"network", "inspect", "--format", "{{.Nope}", "backend"}, "invalid --format template"},
		{"rm without name", []string{"network", "rm"}, "at least one NETWORK"},
		{"unknown subcommand", []string{"network", "prune"}, `unknown command "prune"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := networkFixture()
			_, err := runCLI(t, f, tt.args...)
			if err == nil || !strings.Contains(ErrorMessage(err), tt.wantErr) {
				t.Fatalf("error = %q, want it to contain %q", ErrorMessage(err), tt.wantErr)
			}
			for _, c := range f.calls {
				if strings.Contains(c, "Network") {
					t.Errorf("a bad command reached the managers: %v", f.calls)
				}
			}
		})
	}
}

func TestNetworkPartialFailures(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{"rm tries every network", []string{"network", "rm", "backend", "nope", "front"}, "backend\nfront\n", `network "nope": not found`},
		{"inspect prints what it found", []string{"network", "inspect", "--format", "{{.Spec.Name}}", "nope", "front"}, "front\n", `network "nope": not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := networkFixture()
			out, err := runCLI(t, f, tt.args...)
			if out != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			if err == nil || ErrorMessage(err) != tt.wantErr {
				t.Errorf("error = %q, want %q", ErrorMessage(err), tt.wantErr)
			}
		})
	}
	f := networkFixture()
	_, _ = runCLI(t, f, "network", "rm", "backend", "nope", "netfront")
	if got := strings.Join(f.networksRemoved, ","); got != "backend,front" {
		t.Errorf("removed %s, want backend,front", got)
	}
}

func TestNetworkCreateServerError(t *testing.T) {
	f := networkFixture()
	f.createNetworkErr = status.Error(codes.FailedPrecondition, "allocate network db: conflict: subnet 10.20.0.0/25 overlaps network backend (10.20.0.0/24)")
	out, err := runCLI(t, f, "network", "create", "--subnet", "10.20.0.0/25", "db")
	if out != "" {
		t.Errorf("output = %q, want nothing", out)
	}
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("err = %v, want the server's FailedPrecondition", err)
	}
	if msg := ErrorMessage(err); !strings.Contains(msg, "overlaps network backend") || strings.Contains(msg, "rpc error") {
		t.Errorf("message = %q, want the server's words only", msg)
	}
}
