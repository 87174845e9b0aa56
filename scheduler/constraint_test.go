package scheduler

import (
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestParseConstraintsGood(t *testing.T) {
	tests := []struct {
		expr  string
		key   string
		op    Operator
		value string
		str   string
	}{
		{"node.id==abc123", "node.id", OpEqual, "abc123", "node.id==abc123"},
		{"node.hostname!=node-2", "node.hostname", OpNotEqual, "node-2", "node.hostname!=node-2"},
		{"  node.role == manager  ", "node.role", OpEqual, "manager", "node.role==manager"},
		{"node.role!=Worker", "node.role", OpNotEqual, "Worker", "node.role!=Worker"},
		{"NODE.Labels.Zone==eu", "node.labels.Zone", OpEqual, "eu", "node.labels.Zone==eu"},
		{"node.labels.com.example/tier \t== gold", "node.labels.com.example/tier", OpEqual, "gold", "node.labels.com.example/tier==gold"},
		{"node.platform.os==linux", "node.platform.os", OpEqual, "linux", "node.platform.os==linux"},
		{"node.platform.arch==x86_64", "node.platform.arch", OpEqual, "x86_64", "node.platform.arch==x86_64"},
		{"node.labels.name==two words", "node.labels.name", OpEqual, "two words", "node.labels.name==two words"},
		{"node.hostname==[a-b]+c*", "node.hostname", OpEqual, "[a-b]+c*", "node.hostname==[a-b]+c*"},
		{"node.id==a=", "node.id", OpEqual, "a=", "node.id==a="},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			cs, err := ParseConstraints([]string{tt.expr})
			if err != nil {
				t.Fatalf("ParseConstraints(%q): %v", tt.expr, err)
			}
			if len(cs) != 1 {
				t.Fatalf("got %d constraints, want 1", len(cs))
			}
			c := cs[0]
			if c.Key != tt.key || c.Op != tt.op || c.Value != tt.value {
				t.Errorf("got key %q op %v value %q, want %q %v %q", c.Key, c.Op, c.Value, tt.key, tt.op, tt.value)
			}
			if got := c.String(); got != tt.str {
				t.Errorf("String() = %q, want %q", got, tt.str)
			}
		})
	}
}

func TestParseConstraintsBad(t *testing.T) {
	tests := []struct {
		expr string
		want string // the whole error, or a part of it after "~"
	}{
		{"node.foo==x", `constraint "node.foo==x": unknown key node.foo; use node.id, node.hostname, node.role, node.labels.KEY, node.platform.os or node.platform.arch`},
		{"", `constraint "": empty; write KEY==VALUE or KEY!=VALUE, for example node.role==manager`},
		{"   ", `~empty`},
		{"nodeabc", `~no operator`},
		{"node.role=manager", `~no operator`},
		{"node ~ abc", `~no operator`},
		{"==x", `~missing key before ==`},
		{"node.id==", `~missing value after ==`},
		{"node.id!=  ", `~missing value after !=`},
		{"node.id==a==b", `~more than one operator`},
		{"node.id===a", `~more than one operator`},
		{"node.id!=a!=b", `~more than one operator`},
		{"no de==x", `~key "no de" contains whitespace`},
		{"node.labels==x", `~node.labels needs a label name`},
		{"node.labels.==x", `~node.labels needs a label name`},
		{"node.labels.a!==b", `~more than one operator`},
		{"node.labels.a=b==c", `~label name "a=b" contains = or !`},
		{"node.role==boss", `constraint "node.role==boss": node.role is manager or worker, not "boss"`},
		{"engine.labels.os==ubuntu", `~unknown key engine.labels.os`},
		{"node.id==a\x00b", `~control character`},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			cs, err := ParseConstraints([]string{tt.expr})
			if err == nil {
				t.Fatalf("ParseConstraints(%q) = %v, want error", tt.expr, cs)
			}
			if part, ok := strings.CutPrefix(tt.want, "~"); ok {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not contain %q", err, part)
				}
			} else if err.Error() != tt.want {
				t.Errorf("error\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}

func TestParseConstraintsReportsEveryError(t *testing.T) {
	_, err := ParseConstraints([]string{"node.foo==x", "node.role==manager", "node.bar!=y"})
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{`"node.foo==x"`, `"node.bar!=y"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "node.role==manager") {
		t.Errorf("error %q mentions the good constraint", err)
	}
}

func TestConstraintMatches(t *testing.T) {
	n := &api.Node{
		Id:          "Node-1",
		Role:        api.NodeRole_NODE_ROLE_MANAGER,
		Spec:        &api.NodeSpec{Labels: map[string]string{"zone": "eu", "Tier": "gold"}},
		Description: &api.NodeDescription{Hostname: "alpha", Os: "linux", Arch: "amd64"},
	}
	bare := &api.Node{Id: "bare"}
	tests := []struct {
		expr string
		node *api.Node
		want bool
	}{
		{"node.id==node-1", n, true}, // values compare case-insensitively, as in Swarm
		{"node.id!=node-1", n, false},
		{"node.hostname==alpha", n, true},
		{"node.hostname==beta", n, false},
		{"node.role==manager", n, true},
		{"node.role==worker", n, false},
		{"node.role==worker", bare, true},
		{"node.labels.zone==eu", n, true},
		{"node.labels.zone==EU", n, true},
		{"node.labels.zone!=eu", n, false},
		{"node.labels.zone==us", n, false},
		{"node.labels.ZONE==eu", n, false}, // label names are case-sensitive
		{"node.labels.Tier==gold", n, true},
		{"node.labels.missing==x", n, false},
		{"node.labels.missing!=x", n, true},
		{"node.platform.os==linux", n, true},
		{"node.platform.os==windows", n, false},
		{"node.platform.arch==amd64", n, true},
		{"node.platform.arch==x86_64", n, true},
		{"node.platform.arch==arm64", n, false},
		{"node.platform.arch!=aarch64", n, true},
		{"node.hostname==alpha", bare, false},
		{"node.hostname!=alpha", bare, true},
	}
	for _, tt := range tests {
		t.Run(tt.expr+"/"+tt.node.GetId(), func(t *testing.T) {
			cs, err := ParseConstraints([]string{tt.expr})
			if err != nil {
				t.Fatal(err)
			}
			if got := cs[0].Matches(tt.node); got != tt.want {
				t.Errorf("Matches = %v, want %v", got, tt.want)
			}
		})
	}
}

func FuzzParseConstraints(f *testing.F) {
	for _, s := range []string{
		"node.id==abc", " node.role != worker ", "node.labels.zone==eu", "node.labels.a!==b",
		"node.platform.arch==x86_64", "==", "node.foo==x", "a!=b==c", "node.labels.==x", "node.id==a=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		cs, err := ParseConstraints([]string{expr})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "constraint ") {
				t.Errorf("error %q does not name the constraint", err)
			}
			return
		}
		if len(cs) != 1 {
			t.Fatalf("got %d constraints for one expression", len(cs))
		}
		c := cs[0]
		if c.Key == "" || c.Value == "" {
			t.Fatalf("accepted %q with empty key or value: %+v", expr, c)
		}
		// The canonical form must parse back to the same constraint, or
		// what the API shows the user would not be what it enforces.
		again, err := ParseConstraints([]string{c.String()})
		if err != nil {
			t.Fatalf("%q parsed, but its canonical form %q does not: %v", expr, c.String(), err)
		}
		if again[0] != c {
			t.Fatalf("%q → %+v, but %q → %+v", expr, c, c.String(), again[0])
		}
		c.Matches(&api.Node{})
	})
}
