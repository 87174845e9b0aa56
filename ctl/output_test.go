package ctl

import (
	"strings"
	"testing"
	"time"

	"github.com/shoal-project/shoal/internal/golden"
)

// TestOutputGolden checks every table, JSON and template output against
// testdata/*.golden.
func TestOutputGolden(t *testing.T) {
	tests := []struct {
		golden string
		args   []string
	}{
		{"service_ls_table", []string{"service", "ls"}},
		{"service_ls_json", []string{"service", "ls", "--format", "json"}},
		{"service_ls_template", []string{"service", "ls", "--format", "{{.Name}}: {{.Replicas}} {{.Image}} ({{.Mode}}, {{.ID}})"}},
		{"service_ls_quiet", []string{"service", "ls", "-q"}},
		{"service_ls_notrunc", []string{"service", "ls", "--no-trunc"}},
		{"service_ps_table", []string{"service", "ps", "web", "api"}},
		{"service_ps_notrunc", []string{"service", "ps", "--no-trunc", "web"}},
		{"service_ps_template", []string{"service", "ps", "--format", "{{.Name}}|{{.Node}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}", "web"}},
		{"service_ps_json", []string{"service", "ps", "--format", "json", "api"}},
		{"service_ps_quiet", []string{"service", "ps", "-q", "web"}},
		{"service_ps_filter_desired", []string{"service", "ps", "--filter", "desired-state=running", "web"}},
		{"service_ps_filter_node", []string{"service", "ps", "-f", "node=bravo", "web"}},
		{"service_inspect_json", []string{"service", "inspect", "web", "api"}},
		{"service_inspect_template", []string{"service", "inspect", "--format", "{{.Spec.Name}} v{{.SpecVersion}} {{json .Spec.Labels}}", "web", "api"}},
		{"service_inspect_pretty", []string{"service", "inspect", "--pretty", "web", "api"}},
		{"node_ls_table", []string{"node", "ls"}},
		{"node_ls_json", []string{"node", "ls", "--format", "json"}},
		{"node_ls_template", []string{"node", "ls", "--format", "{{.Hostname}} self={{.Self}} {{.Status}}/{{.Availability}} {{.ManagerStatus}}"}},
		{"node_ls_quiet", []string{"node", "ls", "-q", "--no-trunc"}},
		{"node_inspect_json", []string{"node", "inspect", "alpha"}},
		{"node_inspect_template", []string{"node", "inspect", "--format", "{{.Description.Hostname}} {{.Role}}", "alpha", "charlie"}},
		{"node_ps_self", []string{"node", "ps"}},
		{"node_ps_named", []string{"node", "ps", "bravo", "nodealpha"}},
		{"node_ps_filter", []string{"node", "ps", "-f", "desired-state=running", "--format", "{{.Name}} {{.Node}} {{.CurrentState}}", "bravo"}},
		{"image_ls_table", []string{"image", "ls"}},
		{"image_ls_notrunc", []string{"image", "ls", "--no-trunc"}},
		{"image_ls_quiet", []string{"image", "ls", "-q"}},
		{"image_ls_json", []string{"image", "ls", "--format", "json"}},
		{"image_ls_template", []string{"image", "ls", "--format", "{{.Names}}|{{.Size}}|{{.Holders}}"}},
		{"join_token_worker", []string{"cluster", "join-token", "worker"}},
		{"join_token_manager", []string{"cluster", "join-token", "manager"}},
		{"join_token_quiet", []string{"cluster", "join-token", "-q", "worker"}},
		{"join_token_rotate", []string{"cluster", "join-token", "--rotate", "manager"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			out, err := runCLI(t, newFixture(), tt.args...)
			if err != nil {
				t.Fatalf("shoalctl %s: %v", strings.Join(tt.args, " "), err)
			}
			golden.Check(t, tt.golden, out)
		})
	}
}

func TestNodeLsWithoutSelfHeader(t *testing.T) {
	f := newFixture()
	f.selfNode = ""
	out, err := runCLI(t, f, "node", "ls")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "*") {
		t.Errorf("no node should be marked when shoald does not say which it is:\n%s", out)
	}
}

func TestPartialFailures(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{
			name:    "rm tries every service",
			args:    []string{"service", "rm", "web", "nope", "api"},
			wantOut: "web\napi\n",
			wantErr: `service "nope": not found`,
		},
		{
			name:    "inspect prints what it found",
			args:    []string{"service", "inspect", "--format", "{{.Spec.Name}}", "nope", "api"},
			wantOut: "api\n",
			wantErr: `service "nope": not found`,
		},
		{
			name:    "ps lists the services it found",
			args:    []string{"service", "ps", "-q", "nope", "api"},
			wantOut: "taskapi1aaaa\ntaskapi2aaaa\n",
			wantErr: `service "nope": not found`,
		},
		{
			name:    "node inspect",
			args:    []string{"node", "inspect", "--format", "{{.Id}}", "zulu"},
			wantOut: "",
			wantErr: `node "zulu": not found`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runCLI(t, newFixture(), tt.args...)
			if out != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			if err == nil || ErrorMessage(err) != tt.wantErr {
				t.Errorf("error = %q, want %q", ErrorMessage(err), tt.wantErr)
			}
		})
	}
}

func TestRmRemovesEveryFoundService(t *testing.T) {
	f := newFixture()
	_, _ = runCLI(t, f, "service", "rm", "web", "nope", "svcapi")
	if got := strings.Join(f.removed, ","); got != "web,api" {
		t.Errorf("removed %s, want web,api", got)
	}
}

func TestHumanDuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "Less than a second"},
		{999 * time.Millisecond, "Less than a second"},
		{time.Second, "1 second"},
		{59 * time.Second, "59 seconds"},
		{90 * time.Second, "About a minute"},
		{59 * time.Minute, "59 minutes"},
		{61 * time.Minute, "About an hour"},
		{5 * time.Hour, "5 hours"},
		{3 * 24 * time.Hour, "3 days"},
		{3 * 7 * 24 * time.Hour, "3 weeks"},
		{90 * 24 * time.Hour, "3 months"},
		{3 * 365 * 24 * time.Hour, "3 years"},
	}
	for _, tt := range tests {
		if got := humanDuration(tt.d); got != tt.want {
			t.Errorf("humanDuration(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

func TestSince(t *testing.T) {
	if got := since("Running", fixedNow.Add(-3*time.Second), fixedNow); got != "Running 3 seconds ago" {
		t.Errorf("got %q", got)
	}
	if got := since("Running", fixedNow.Add(time.Minute), fixedNow); got != "Running less than a second ago" {
		t.Errorf("a clock ahead of ours: got %q", got)
	}
	if got := since("New", time.Time{}, fixedNow); got != "New" {
		t.Errorf("unknown time: got %q", got)
	}
}
