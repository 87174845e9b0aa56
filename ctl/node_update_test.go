package ctl

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	active = api.NodeAvailability_NODE_AVAILABILITY_ACTIVE
	drain  = api.NodeAvailability_NODE_AVAILABILITY_DRAIN
	pause  = api.NodeAvailability_NODE_AVAILABILITY_PAUSE
	worker = api.NodeRole_NODE_ROLE_WORKER
	mgr    = api.NodeRole_NODE_ROLE_MANAGER
)

func aborted() error {
	return status.Error(codes.Aborted, "node nodealphaaaaaaaaaaaaaaaaaa changed since version 3; read it again")
}

func TestNodeUpdate(t *testing.T) {
	withLabels := func(f *fakeControl) {
		f.nodes[1].Spec.Labels = map[string]string{"rack": "r1", "zone": "us"}
	}
	tests := []struct {
		name      string
		setup     func(*fakeControl)
		args      []string
		wantSpec  *api.NodeSpec // alpha's spec afterwards
		wantCalls string
		wantErr   string
	}{
		{
			name:      "drain",
			args:      []string{"--availability", "drain", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: drain, DesiredRole: mgr},
			wantCalls: "GetNode,UpdateNode",
		},
		{
			name:      "by id prefix",
			args:      []string{"--availability", "pause", "nodealpha"},
			wantSpec:  &api.NodeSpec{Availability: pause, DesiredRole: mgr},
			wantCalls: "GetNode,UpdateNode",
		},
		{
			name:      "labels added, changed and removed",
			setup:     withLabels,
			args:      []string{"--label-add", "zone=eu", "--label-add", "ssd", "--label-rm", "rack", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr, Labels: map[string]string{"zone": "eu", "ssd": ""}},
			wantCalls: "GetNode,UpdateNode",
		},
		{
			name:      "last labels removed",
			setup:     withLabels,
			args:      []string{"--label-rm", "rack", "--label-rm", "zone", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr},
			wantCalls: "GetNode,UpdateNode",
		},
		{
			name:      "unchanged spec is not written",
			setup:     withLabels,
			args:      []string{"--availability", "active", "--label-add", "zone=us", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr, Labels: map[string]string{"rack": "r1", "zone": "us"}},
			wantCalls: "GetNode",
		},
		{
			name:      "fields the spec leaves unset are sent as in effect",
			setup:     func(f *fakeControl) { f.nodes[1].Spec = nil },
			args:      []string{"--label-add", "zone=eu", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr, Labels: map[string]string{"zone": "eu"}},
			wantCalls: "GetNode,UpdateNode",
		},
		{
			name:      "unset fields alone are no change",
			setup:     func(f *fakeControl) { f.nodes[1].Spec = &api.NodeSpec{} },
			args:      []string{"--availability", "active", "alpha"},
			wantSpec:  &api.NodeSpec{},
			wantCalls: "GetNode",
		},
		{
			name:      "retried once after a conflict",
			setup:     func(f *fakeControl) { f.updateNodeErrs = []error{aborted()} },
			args:      []string{"--availability", "drain", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: drain, DesiredRole: mgr},
			wantCalls: "GetNode,UpdateNode,GetNode,UpdateNode",
		},
		{
			name:      "second conflict reported",
			setup:     func(f *fakeControl) { f.updateNodeErrs = []error{aborted(), aborted()} },
			args:      []string{"--availability", "drain", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr},
			wantCalls: "GetNode,UpdateNode,GetNode,UpdateNode",
			wantErr:   "node nodealphaaaaaaaaaaaaaaaaaa changed since version 3; read it again",
		},
		{
			name:      "removing a missing label",
			args:      []string{"--label-rm", "rack", "alpha"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr},
			wantCalls: "GetNode",
			wantErr:   `node alpha has no label "rack"`,
		},
		{
			name:      "unknown node",
			args:      []string{"--availability", "drain", "zulu"},
			wantSpec:  &api.NodeSpec{Availability: active, DesiredRole: mgr},
			wantCalls: "GetNode",
			wantErr:   `node "zulu": not found`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			if tt.setup != nil {
				tt.setup(f)
			}
			out, err := runCLI(t, f, append([]string{"node", "update"}, tt.args...)...)
			if tt.wantErr != "" {
				if got := ErrorMessage(err); got != tt.wantErr {
					t.Errorf("error = %q, want %q", got, tt.wantErr)
				}
				if out != "" {
					t.Errorf("printed %q after a failed update", out)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if want := tt.args[len(tt.args)-1] + "\n"; out != want {
					t.Errorf("output = %q, want %q", out, want)
				}
			}
			if got := strings.Join(f.calls, ","); got != tt.wantCalls {
				t.Errorf("calls = %s, want %s", got, tt.wantCalls)
			}
			if got := f.nodes[1].GetSpec(); !proto.Equal(got, tt.wantSpec) {
				t.Errorf("spec = %s, want %s", protojson.Format(got), protojson.Format(tt.wantSpec))
			}
		})
	}
}

func TestNodeUpdateSendsVersionRead(t *testing.T) {
	f := newFixture()
	if _, err := runCLI(t, f, "node", "update", "--availability", "drain", "alpha"); err != nil {
		t.Fatal(err)
	}
	if len(f.nodeUpdates) != 1 {
		t.Fatalf("UpdateNode called %d times", len(f.nodeUpdates))
	}
	req := f.nodeUpdates[0]
	if req.GetVersion() != 3 || req.GetNode() != nodeAlpha {
		t.Errorf("UpdateNode(node %q, version %d), want node %s at version 3", req.GetNode(), req.GetVersion(), nodeAlpha)
	}
}

func TestNodePromoteDemote(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(*fakeControl)
		args      []string
		wantOut   string
		wantErr   string
		wantRoles map[string]api.NodeRole // desired role by hostname
	}{
		{
			name:      "promote a worker",
			args:      []string{"promote", "charlie"},
			wantOut:   "node charlie is now a manager\n",
			wantRoles: map[string]api.NodeRole{"charlie": mgr},
		},
		{
			name:      "demote a manager",
			args:      []string{"demote", "bravo"},
			wantOut:   "node bravo is now a worker\n",
			wantRoles: map[string]api.NodeRole{"bravo": worker},
		},
		{
			name:      "already a manager",
			args:      []string{"promote", "alpha"},
			wantOut:   "node alpha is already a manager\n",
			wantRoles: map[string]api.NodeRole{"alpha": mgr},
		},
		{
			name:      "spec without a role means the current one",
			setup:     func(f *fakeControl) { f.nodes[0].Spec.DesiredRole = api.NodeRole_NODE_ROLE_UNSPECIFIED },
			args:      []string{"demote", "charlie"},
			wantOut:   "node charlie is already a worker\n",
			wantRoles: map[string]api.NodeRole{"charlie": api.NodeRole_NODE_ROLE_UNSPECIFIED},
		},
		{
			name:      "promote where the spec names no role",
			setup:     func(f *fakeControl) { f.nodes[0].Spec = nil },
			args:      []string{"promote", "charlie"},
			wantOut:   "node charlie is now a manager\n",
			wantRoles: map[string]api.NodeRole{"charlie": mgr},
		},
		{
			name:      "every argument tried",
			args:      []string{"promote", "zulu", "charlie"},
			wantOut:   "node charlie is now a manager\n",
			wantErr:   `node "zulu": not found`,
			wantRoles: map[string]api.NodeRole{"charlie": mgr},
		},
		{
			name: "refusal passes through",
			setup: func(f *fakeControl) {
				f.updateNodeErrs = []error{status.Error(codes.FailedPrecondition,
					"demoting alpha would leave 1 reachable manager of 2: no quorum; demote or remove unreachable managers first")}
			},
			args:      []string{"demote", "alpha"},
			wantErr:   "demoting alpha would leave 1 reachable manager of 2: no quorum; demote or remove unreachable managers first",
			wantRoles: map[string]api.NodeRole{"alpha": mgr},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			if tt.setup != nil {
				tt.setup(f)
			}
			out, err := runCLI(t, f, append([]string{"node"}, tt.args...)...)
			if out != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			if got := ErrorMessage(err); got != tt.wantErr {
				t.Errorf("error = %q, want %q", got, tt.wantErr)
			}
			for host, want := range tt.wantRoles {
				n, _ := f.lookupNode(host)
				if got := n.GetSpec().GetDesiredRole(); got != want {
					t.Errorf("%s desired role = %s, want %s", host, got, want)
				}
			}
		})
	}
}

func TestNodeRm(t *testing.T) {
	tests := []struct {
		name      string
		args      []string
		wantOut   string
		wantErr   string
		wantForce []bool // per removal made
	}{
		{"down node", []string{"charlie"}, "charlie\n", "", []bool{false}},
		{"ready node needs force", []string{"alpha", "charlie"}, "charlie\n", "node alpha is not down; remove it with --force", []bool{false}},
		{"force", []string{"--force", "alpha", "bravo"}, "alpha\nbravo\n", "", []bool{true, true}},
		{"unknown", []string{"-f", "zulu"}, "", `node "zulu": not found`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			out, err := runCLI(t, f, append([]string{"node", "rm"}, tt.args...)...)
			if out != tt.wantOut {
				t.Errorf("output = %q, want %q", out, tt.wantOut)
			}
			if got := ErrorMessage(err); got != tt.wantErr {
				t.Errorf("error = %q, want %q", got, tt.wantErr)
			}
			var force []bool
			for _, r := range f.nodesRemoved {
				force = append(force, r.GetForce())
			}
			if len(force) != len(tt.wantForce) || !equalBools(force, tt.wantForce) {
				t.Errorf("removals with force %v, want %v", force, tt.wantForce)
			}
		})
	}
}

func equalBools(a, b []bool) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func TestNodePsWithoutSelf(t *testing.T) {
	f := newFixture()
	f.selfNode = ""
	out, err := runCLI(t, f, "node", "ps")
	want := "name a NODE: shoald at /run/shoal/shoald.sock did not say which node it runs on"
	if got := ErrorMessage(err); !strings.HasPrefix(got, want) {
		t.Errorf("error = %q, want it to start with %q", got, want)
	}
	if out != "" {
		t.Errorf("printed %q", out)
	}
	// Naming the node works without the header.
	out, err = runCLI(t, f, "node", "ps", "-q", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	if out != "taskapi1aaaa\ntaskweb1newa\n" {
		t.Errorf("output = %q", out)
	}
}

func TestNodePsPartialFailure(t *testing.T) {
	out, err := runCLI(t, newFixture(), "node", "ps", "-q", "zulu", "bravo")
	if out != "taskweb1olda\ntaskweb2aaaa\n" {
		t.Errorf("output = %q", out)
	}
	if got := ErrorMessage(err); got != `node "zulu": not found` {
		t.Errorf("error = %q", got)
	}
}

func TestJoinToken(t *testing.T) {
	t.Run("request", func(t *testing.T) {
		f := newFixture()
		if _, err := runCLI(t, f, "cluster", "join-token", "--rotate", "-q", "manager"); err != nil {
			t.Fatal(err)
		}
		want := &api.GetJoinTokenRequest{Role: mgr, Rotate: true}
		if len(f.tokenReqs) != 1 || !proto.Equal(f.tokenReqs[0], want) {
			t.Errorf("requests = %v, want %v", f.tokenReqs, want)
		}
	})
	t.Run("quiet rotate keeps stdout for the token", func(t *testing.T) {
		f := newFixture()
		out, errOut, err := runIO(t, testEnv(f), strings.NewReader(""), "cluster", "join-token", "--rotate", "-q", "worker")
		if err != nil {
			t.Fatal(err)
		}
		if out != "SHOAL-1-3q2p5ka7yrq1gpiqgvwh31rk7u-workersecretworkersecret-rotated\n" {
			t.Errorf("stdout = %q, want the new token alone", out)
		}
		if !strings.Contains(errOut, "the old one no longer works") {
			t.Errorf("stderr = %q, want the rotation noted", errOut)
		}
	})
	t.Run("no manager address", func(t *testing.T) {
		f := newFixture()
		f.managers = nil
		out, err := runCLI(t, f, "cluster", "join-token", "worker")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "shoald join --token SHOAL-1-3q2p5ka7yrq1gpiqgvwh31rk7u-workersecretworkersecret MANAGER-ADDR\n") ||
			!strings.Contains(out, "No manager advertises an address") {
			t.Errorf("output:\n%s", out)
		}
	})
}
