package e2e

import (
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	tc "github.com/shoal-project/shoal/internal/testcluster"
)

// TestBadInput: each mistake gets a clear error naming what was wrong, a
// non-zero exit, and changes nothing.
func TestBadInput(t *testing.T) {
	n := tc.NewSingle(t)
	n.Ctl("network", "create", "--subnet", "10.20.0.0/24", "backend")
	n.Ctl("service", "create", "--name", "web", "--replicas", "1", "--network", "backend", "--publish", "8080:80", tc.Image)
	waitRunning(t, n, "web", 1)

	state := func() string {
		return n.Ctl("service", "ls", "--format", "json") + n.Ctl("service", "ps", "web", "--format", "json") +
			n.Ctl("network", "ls", "--format", "json")
	}
	before := state()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown service ps", []string{"service", "ps", "nope"}, `service "nope": not found`},
		{"unknown service rm", []string{"service", "rm", "nope"}, `service "nope": not found`},
		{"unknown service scale", []string{"service", "scale", "nope=2"}, `service "nope": not found`},
		{"unknown service inspect", []string{"service", "inspect", "nope"}, `service "nope": not found`},
		{"duplicate name", []string{"service", "create", "--name", "web", tc.Image}, `service "web" already exists`},
		{"negative replicas", []string{"service", "create", "--name", "neg", "--replicas", "-1", tc.Image}, "--replicas must be 0 or more"},
		{"negative scale", []string{"service", "scale", "web=-1"}, "web=-1"},
		{"malformed env", []string{"service", "create", "--name", "env", "--env", "NOVALUE", tc.Image}, `invalid --env "NOVALUE"`},
		{"env bad key", []string{"service", "create", "--name", "env", "--env", "1A=b", tc.Image}, `invalid --env "1A=b"`},
		{"empty image", []string{"service", "create", "--name", "noimg", ""}, "image"},
		{"no image", []string{"service", "create", "--name", "noimg"}, "image"},
		{"bad name", []string{"service", "create", "--name", "Bad_Name", tc.Image}, `"Bad_Name"`},
		{"bad constraint", []string{"service", "create", "--name", "con", "--constraint", "node.colour==red", tc.Image}, "node.colour"},
		{"bad restart condition", []string{"service", "create", "--name", "rc", "--restart-condition", "sometimes", tc.Image}, "sometimes"},
		{"unknown network", []string{"service", "create", "--name", "net", "--network", "nope", tc.Image}, `network "nope": not found`},
		{"overlapping subnet", []string{"network", "create", "--subnet", "10.20.0.0/16", "wide"}, "overlaps network backend"},
		{"network in use", []string{"network", "rm", "backend"}, "in use by service web"},
		{"ingress network", []string{"network", "rm", "ingress"}, "ingress network"},
		{"published port in use", []string{"service", "create", "--name", "other", "--publish", "8080:80", tc.Image}, "published port 8080/tcp is already used by service web"},
		{"malformed publish", []string{"service", "create", "--name", "other", "--publish", "80:abc", tc.Image}, `invalid --publish "80:abc"`},
		{"malformed publish long form", []string{"service", "create", "--name", "other", "--publish", "published=8081,target=80,mode=bridge", tc.Image}, `invalid --publish`},
		{"malformed subnet", []string{"network", "create", "--subnet", "10.20.0/99", "bad"}, "10.20.0/99"},
		{"unknown service update", []string{"service", "update", "--image", tc.Image, "nope"}, `service "nope": not found`},
		{"update without a change", []string{"service", "update", "web"}, "nothing to update"},
		{"negative update parallelism", []string{"service", "update", "--update-parallelism", "-1", "web"}, "--update-parallelism must be 0 or more"},
		{"failure ratio out of range", []string{"service", "update", "--update-max-failure-ratio", "2", "web"}, "--update-max-failure-ratio must be a fraction from 0 to 1"},
		{"update order typo", []string{"service", "update", "--update-order", "stop-frist", "web"}, `invalid --update-order "stop-frist"`},
		{"update to an unknown network", []string{"service", "update", "--network-add", "nope", "web"}, `network "nope": not found`},
		{"rename by update", []string{"service", "update", "--name", "x", "web"}, "unknown flag: --name"},
		{"rollback of a service never updated", []string{"service", "rollback", "web"}, `service "web" has no previous spec to roll back to`},
		{"rollback of an unknown service", []string{"service", "rollback", "nope"}, `service "nope": not found`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := n.Try(tt.args...)
			if err == nil {
				t.Fatalf("shoalctl %s succeeded:\n%s", strings.Join(tt.args, " "), out)
			}
			if !strings.Contains(strings.ToLower(out), strings.ToLower(tt.want)) {
				t.Errorf("shoalctl %s: error does not say %q:\n%s", strings.Join(tt.args, " "), tt.want, out)
			}
			if strings.Contains(out, "rpc error") {
				t.Errorf("raw gRPC error shown to the user:\n%s", out)
			}
			if after := state(); after != before {
				t.Errorf("state changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}

	t.Run("image that cannot be pulled", func(t *testing.T) {
		// A registry on a closed loopback port: the pull fails at once
		// without any traffic leaving the machine.
		const img = "127.0.0.1:1/none/such:1"
		out, err := n.Try("service", "create", "--name", "ghost", img)
		if err == nil {
			t.Fatalf("service create with an unpullable image succeeded:\n%s", out)
		}
		if !strings.Contains(out, "rejected") || !strings.Contains(out, img) {
			t.Errorf("create does not report the rejection and the image:\n%s", out)
		}
		var rejected *api.Task
		for _, task := range n.Tasks("ghost") {
			if task.GetStatus().GetState() == api.TaskState_TASK_STATE_REJECTED {
				rejected = task
			}
		}
		if rejected == nil || !strings.Contains(rejected.GetStatus().GetErr(), img) {
			t.Fatalf("no rejected task naming the image:\n%s", n.Ctl("service", "ps", "ghost", "--no-trunc"))
		}
		if ps := n.Ctl("service", "ps", "ghost", "--no-trunc"); !strings.Contains(ps, "Rejected") || !strings.Contains(ps, img) {
			t.Errorf("service ps does not show the reason:\n%s", ps)
		}
		n.Ctl("service", "rm", "ghost")
	})

	t.Run("second init on a data dir that holds a cluster", func(t *testing.T) {
		out, err := n.Shoald("init")
		if err == nil {
			t.Fatalf("second shoald init succeeded:\n%s", out)
		}
		if !strings.Contains(out, "already holds a cluster") {
			t.Errorf("second init error does not explain:\n%s", out)
		}
		if got := len(runningTasks(n.Tasks("web"))); got != 1 {
			t.Fatalf("the running cluster was disturbed: %d running tasks", got)
		}
	})
}
