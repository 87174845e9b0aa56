package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// TestEncryptedNetworkWithoutWireGuard is an operator's session with an
// encrypted network on a node whose kernel has no WireGuard (this host's):
// the network is made and shown as encrypted, a service on it stays
// pending and `service ps` says why, and bad options are refused, naming
// what was wrong, with nothing changed. The VM tier runs the same network
// where the kernel has WireGuard.
func TestEncryptedNetworkWithoutWireGuard(t *testing.T) {
	n := tc.NewSingle(t)
	state := func() string {
		return n.Ctl("network", "ls", "--format", "json") + n.Ctl("service", "ls", "--format", "json")
	}

	t.Run("bad options are refused", func(t *testing.T) {
		before := state()
		for _, tt := range []struct {
			name string
			args []string
			want string
		}{
			{"unknown option", []string{"network", "create", "--opt", "bogus", "secure"}, `unknown --opt "bogus": options are encrypted`},
			{"encrypted with a bad value", []string{"network", "create", "--opt", "encrypted=maybe", "secure"}, `invalid --opt "encrypted=maybe": want encrypted, encrypted=true or encrypted=false`},
		} {
			t.Run(tt.name, func(t *testing.T) {
				out, err := n.Try(tt.args...)
				if err == nil {
					t.Fatalf("shoalctl %s succeeded:\n%s", strings.Join(tt.args, " "), out)
				}
				if !strings.Contains(out, tt.want) {
					t.Errorf("shoalctl %s: error does not say %q:\n%s", strings.Join(tt.args, " "), tt.want, out)
				}
				if after := state(); after != before {
					t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
				}
			})
		}
	})

	n.Ctl("network", "create", "--opt", "encrypted", "secure")
	n.Ctl("network", "create", "plain")
	t.Run("the network shows as encrypted", func(t *testing.T) {
		if got := n.Ctl("network", "inspect", "--format", "{{.Spec.Name}} {{.Spec.Encrypted}}", "secure", "plain"); got != "secure true\nplain false\n" {
			t.Errorf("network inspect: %q, want secure true and plain false", got)
		}
		ls := n.Ctl("network", "ls")
		if !strings.Contains(ls, "ENCRYPTED") || encryptedColumn(ls, "secure") != "yes" || encryptedColumn(ls, "plain") != "no" {
			t.Errorf("network ls does not show secure as encrypted and plain as not:\n%s", ls)
		}
	})

	t.Run("a service on it stays pending, saying why", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		nodes, err := n.Client().ListNodes(ctx, &api.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, nd := range nodes.GetNodes() {
			if len(nd.GetDescription().GetWireguardKey()) != 0 {
				t.Skipf("node %s reports a WireGuard key: this host's kernel has WireGuard, so the task would run", nd.GetDescription().GetHostname())
			}
		}
		if pretty := n.Ctl("node", "inspect", "--pretty", n.Name); !strings.Contains(pretty, "WireGuard key:  none (tasks of encrypted networks do not run here)") {
			t.Errorf("node inspect --pretty does not say the node has no WireGuard key:\n%s", pretty)
		}
		n.Ctl("service", "create", "--detach", "--name", "vault", "--network", "secure", tc.Image)
		const reason = "no suitable node (1 node lacks WireGuard (the task is on an encrypted network))"
		tc.Eventually(t, converge, "vault pending with the reason", func() (bool, string) {
			ps := n.Ctl("service", "ps", "--no-trunc", "vault")
			return strings.Contains(ps, "Pending") && strings.Contains(ps, reason), ps
		})
		for _, task := range n.Tasks("vault") {
			if task.GetNodeId() != "" {
				t.Errorf("task %s was placed on %s, a node without WireGuard", task.GetId(), task.GetNodeId())
			}
		}
		// A service on a plain network runs on the same node meanwhile.
		n.Ctl("service", "create", "--name", "web", "--network", "plain", tc.Image)
		waitRunning(t, n, "web", 1)
		n.Ctl("service", "rm", "vault", "web")
	})
}

// encryptedColumn is the ENCRYPTED column (the last) of network ls's row
// for the network name.
func encryptedColumn(ls, name string) string {
	for line := range strings.Lines(ls) {
		if f := strings.Fields(line); len(f) > 2 && f[1] == name {
			return f[len(f)-1]
		}
	}
	return ""
}
