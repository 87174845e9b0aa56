package ctl

import (
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// TestArgumentErrors checks that bad input is refused with a clear message
// before shoalctl even connects to shoald.
func TestArgumentErrors(t *testing.T) {
	create := func(args ...string) []string { return append([]string{"service", "create"}, args...) }
	upd := func(args ...string) []string { return append([]string{"service", "update"}, args...) }
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"missing image", create("--name", "web"), `"shoalctl service create" requires an IMAGE argument`},
		{"missing name", create("nginx"), "--name is required"},
		{"bad name", create("--name", "Web", "nginx"), `invalid --name "Web"`},
		{"negative replicas", create("--name", "web", "--replicas", "-1", "nginx"), "--replicas must be 0 or more, got -1"},
		{"replicas not a number", create("--name", "web", "--replicas", "three", "nginx"), `invalid argument "three" for "--replicas"`},
		{"env without value", create("--name", "web", "-e", "FOO", "nginx"), `invalid --env "FOO": want KEY=VALUE`},
		{"env with bad key", create("--name", "web", "--env", "1X=2", "nginx"), `invalid --env "1X=2": want KEY=VALUE`},
		{"env with empty key", create("--name", "web", "--env", "=2", "nginx"), `invalid --env "=2": want KEY=VALUE`},
		{"label without key", create("--name", "web", "--label", "=x", "nginx"), `invalid --label "=x"`},
		{"bad constraint", create("--name", "web", "--constraint", "node.labels.zone=eu", "nginx"), `invalid --constraint "node.labels.zone=eu"`},
		{"bad restart condition", create("--name", "web", "--restart-condition", "always", "nginx"), `invalid --restart-condition "always": want any, on-failure or none`},
		{"negative restart delay", create("--name", "web", "--restart-delay", "-1s", "nginx"), "--restart-delay must not be negative, got -1s"},
		{"negative timeout", create("--name", "web", "--timeout", "-1s", "nginx"), "--timeout must not be negative"},
		{"bad duration", create("--name", "web", "--stop-grace-period", "soon", "nginx"), `invalid argument "soon" for "--stop-grace-period"`},
		{"unknown flag", create("--name", "web", "--bogus", "80:80", "nginx"), "unknown flag: --bogus"},
		{"malformed publish", create("--name", "web", "--publish", "80:abc", "nginx"), `invalid --publish "80:abc"`},
		{"publish without target", create("--name", "web", "--publish", "8080:", "nginx"), `invalid --publish "8080:"`},
		{"bad endpoint mode", create("--name", "web", "--endpoint-mode", "rr", "nginx"), `invalid --endpoint-mode "rr"`},
		{"scale without count", []string{"service", "scale", "web"}, `invalid scale argument "web": want SERVICE=REPLICAS`},
		{"scale without name", []string{"service", "scale", "=3"}, `invalid scale argument "=3": want SERVICE=REPLICAS`},
		{"scale bad count", []string{"service", "scale", "web=3", "api=x"}, `invalid scale argument "api=x": REPLICAS must be a whole number, 0 or more`},
		{"scale negative", []string{"service", "scale", "web=-1"}, `invalid scale argument "web=-1"`},
		{"scale nothing", []string{"service", "scale"}, "requires at least one SERVICE=REPLICAS argument"},
		{"ps bad filter key", []string{"service", "ps", "-f", "colour=red", "web"}, `invalid --filter "colour=red": known filters are desired-state and node`},
		{"ps bad desired state", []string{"service", "ps", "-f", "desired-state=happy", "web"}, `invalid --filter "desired-state=happy"`},
		{"ps no service", []string{"service", "ps"}, "requires at least one SERVICE argument"},
		{"ls bad template", []string{"service", "ls", "--format", "{{.Name"}, "invalid --format template"},
		{"ls argument", []string{"service", "ls", "web"}, `"shoalctl service ls" takes no arguments, got "web"`},
		{"inspect pretty and format", []string{"service", "inspect", "--pretty", "--format", "json", "web"}, "--pretty and --format cannot be used together"},
		{"inspect bad template", []string{"node", "inspect", "--format", "{{", "alpha"}, "invalid --format template"},
		{"rm nothing", []string{"service", "rm"}, "requires at least one SERVICE argument"},
		{"unknown subcommand", []string{"service", "up"}, `unknown command "up" for "shoalctl service"`},
		{"update unknown availability", []string{"node", "update", "--availability", "off", "alpha"}, `invalid --availability "off": want active, pause or drain`},
		{"update empty availability", []string{"node", "update", "--availability", "", "alpha"}, `invalid --availability ""`},
		{"update malformed label", []string{"node", "update", "--label-add", "=eu", "alpha"}, `invalid --label-add "=eu": want KEY=VALUE`},
		{"update empty label", []string{"node", "update", "--label-add", "", "alpha"}, `invalid --label-add ""`},
		{"update label-rm with value", []string{"node", "update", "--label-rm", "zone=eu", "alpha"}, `invalid --label-rm "zone=eu": want the KEY of a label`},
		{"update label added and removed", []string{"node", "update", "--label-add", "zone=eu", "--label-rm", "zone", "alpha"}, `--label-add and --label-rm both name label "zone"`},
		{"update nothing", []string{"node", "update", "alpha"}, "nothing to update: give --availability, --label-add or --label-rm"},
		{"update no node", []string{"node", "update", "--availability", "drain"}, `"shoalctl node update" requires exactly one NODE argument, got 0`},
		{"update two nodes", []string{"node", "update", "--availability", "drain", "alpha", "bravo"}, `requires exactly one NODE argument, got 2`},
		{"promote nothing", []string{"node", "promote"}, `"shoalctl node promote" requires at least one NODE argument`},
		{"demote nothing", []string{"node", "demote"}, `"shoalctl node demote" requires at least one NODE argument`},
		{"node rm nothing", []string{"node", "rm"}, `"shoalctl node rm" requires at least one NODE argument`},
		{"node ps bad filter", []string{"node", "ps", "-f", "state=running"}, `invalid --filter "state=running"`},
		{"join-token unknown role", []string{"cluster", "join-token", "admin"}, `invalid ROLE "admin": want worker or manager`},
		{"join-token plural role", []string{"cluster", "join-token", "workers"}, `invalid ROLE "workers": want worker or manager`},
		{"join-token no role", []string{"cluster", "join-token"}, `"shoalctl cluster join-token" requires a ROLE argument (worker or manager), got 0`},
		{"join-token two roles", []string{"cluster", "join-token", "worker", "manager"}, "requires a ROLE argument (worker or manager), got 2"},
		{"image load missing file", []string{"image", "load", "/nonexistent/web.tar"}, "cannot open image tarball: open /nonexistent/web.tar: no such file or directory"},
		{"image load missing input", []string{"image", "load", "-i", "/nonexistent/web.tar"}, "cannot open image tarball: open /nonexistent/web.tar: no such file or directory"},
		{"image load directory", []string{"image", "load", "testdata"}, "read image tarball testdata: read testdata: is a directory"},
		{"image load empty file", []string{"image", "load", os.DevNull}, "/dev/null is empty: want an OCI or Docker image tarball"},
		{"image load no file", []string{"image", "load"}, `"shoalctl image load" requires a FILE argument (- for standard input)`},
		{"image load file and input", []string{"image", "load", "-i", "a.tar", "b.tar"}, "give the tarball as FILE or as --input, not both"},
		{"image load two files", []string{"image", "load", "a.tar", "b.tar"}, "accepts at most 1 arg(s), received 2"},
		{"image ls argument", []string{"image", "ls", "web"}, `"shoalctl image ls" takes no arguments, got "web"`},
		{"bad host", []string{"--host", "unix:///run/shoal.sock", "node", "ls"}, `invalid --host "unix:///run/shoal.sock": want HOST[:PORT]`},
		{"nothing to update", upd("web"), "nothing to update: give a flag that changes the service (see --help), or --force to replace its tasks"},
		{"only waiting flags", upd("-d", "web"), "nothing to update"},
		{"no service", upd("--image", "x"), `"shoalctl service update" requires exactly one SERVICE argument, got 0`},
		{"two services", upd("--force", "web", "api"), "requires exactly one SERVICE argument, got 2"},
		{"negative parallelism", upd("--update-parallelism", "-1", "web"), "--update-parallelism must be 0 or more (0: every slot at once), got -1"},
		{"negative rollback parallelism", upd("--rollback-parallelism", "-2", "web"), "--rollback-parallelism must be 0 or more"},
		{"failure ratio above 1", upd("--update-max-failure-ratio", "1.5", "web"), "--update-max-failure-ratio must be a fraction from 0 to 1, got 1.5"},
		{"negative failure ratio", upd("--rollback-max-failure-ratio", "-0.1", "web"), "--rollback-max-failure-ratio must be a fraction from 0 to 1, got -0.1"},
		{"order typo", upd("--update-order", "stop-frist", "web"), `invalid --update-order "stop-frist": want stop-first or start-first`},
		{"failure action typo", upd("--update-failure-action", "retry", "web"), `invalid --update-failure-action "retry": want pause, continue or rollback`},
		{"a rollback is not rolled back", upd("--rollback-failure-action", "rollback", "web"), `invalid --rollback-failure-action "rollback": want pause or continue`},
		{"negative monitor", upd("--update-monitor", "-1s", "web"), "--update-monitor must not be negative, got -1s"},
		{"negative delay", upd("--update-delay", "-1s", "web"), "--update-delay must not be negative, got -1s"},
		{"negative restart window", upd("--restart-window", "-1m", "web"), "--restart-window must not be negative, got -1m0s"},
		{"bad env", upd("--env-add", "1X=2", "web"), `invalid --env-add "1X=2": want KEY=VALUE`},
		{"env-rm with value", upd("--env-rm", "A=1", "web"), `invalid --env-rm "A=1": want the KEY of a variable`},
		{"label-rm with value", upd("--label-rm", "a=b", "web"), `invalid --label-rm "a=b": want the KEY of a label`},
		{"bad constraint", upd("--constraint-add", "zone=eu", "web"), `invalid --constraint-add "zone=eu"`},
		{"bad publish", upd("--publish-add", "80:x", "web"), `invalid --publish-add "80:x"`},
		{"bad publish-rm", upd("--publish-rm", "x", "web"), `invalid --publish-rm "x"`},
		{"bad restart condition", upd("--restart-condition", "always", "web"), `invalid --restart-condition "always"`},
		{"bad endpoint mode", upd("--endpoint-mode", "rr", "web"), `invalid --endpoint-mode "rr"`},
		{"negative replicas", upd("--replicas", "-1", "web"), "--replicas must be 0 or more, got -1"},
		{"negative timeout", upd("--force", "--timeout", "-1s", "web"), "--timeout must not be negative"},
		{"create's list flag", upd("--env", "A=1", "web"), "unknown flag: --env"},
		{"update's flags on create", []string{"service", "create", "--name", "web", "--image", "x", "nginx"}, "unknown flag: --image"},
		{"update's list flags on create", []string{"service", "create", "--name", "web", "--env-add", "A=1", "nginx"}, "unknown flag: --env-add"},
		{"create checks rollout flags too", []string{"service", "create", "--name", "web", "--update-order", "first", "nginx"}, `invalid --update-order "first"`},
		{"rollback no service", []string{"service", "rollback"}, `"shoalctl service rollback" requires exactly one SERVICE argument, got 0`},
		{"rollback spec flags", []string{"service", "rollback", "--image", "x", "web"}, "unknown flag: --image"},
		{"rollback negative timeout", []string{"service", "rollback", "--timeout", "-1s", "web"}, "--timeout must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			_, err := runCLI(t, f, tt.args...)
			if err == nil {
				t.Fatalf("shoalctl %s: no error, want %q", strings.Join(tt.args, " "), tt.wantErr)
			}
			if msg := ErrorMessage(err); !strings.Contains(msg, tt.wantErr) {
				t.Errorf("error = %q, want it to contain %q", msg, tt.wantErr)
			}
			if f.connects != 0 || len(f.calls) != 0 {
				t.Errorf("connected %d times and called %v before rejecting the arguments", f.connects, f.calls)
			}
		})
	}
}

func TestCreateBuildsSpec(t *testing.T) {
	replicated := func(n uint64) *api.ServiceSpec_Replicated {
		return &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: n}}
	}
	tests := []struct {
		name string
		args []string
		want *api.ServiceSpec
	}{
		{
			name: "defaults left to the managers",
			args: []string{"--name", "web", "nginx"},
			want: &api.ServiceSpec{
				Name: "web",
				Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "nginx"}},
				Mode: replicated(1),
			},
		},
		{
			name: "every flag",
			args: []string{
				"--name", "web", "--replicas", "0",
				"-e", "A=1", "--env", "B=x=y,z", "-e", "EMPTY=",
				"--label", "tier=front", "--label", "bare",
				"--constraint", "node.labels.zone==eu", "--constraint", "node.role!=manager",
				"--restart-condition", "on-failure", "--restart-delay", "2s", "--restart-max-delay", "1m", "--restart-max-attempts", "4",
				"--workdir", "/srv", "--user", "nobody:nogroup", "--hostname", "h1",
				"--entrypoint", "/bin/sh  -c", "--stop-grace-period", "3s",
				"busybox", "echo", "--not-a-flag", "hi",
			},
			want: &api.ServiceSpec{
				Name:   "web",
				Labels: map[string]string{"tier": "front", "bare": ""},
				Task: &api.TaskSpec{
					Container: &api.ContainerSpec{
						Image:           "busybox",
						Command:         []string{"/bin/sh", "-c"},
						Args:            []string{"echo", "--not-a-flag", "hi"},
						Env:             []string{"A=1", "B=x=y,z", "EMPTY="},
						Dir:             "/srv",
						User:            "nobody:nogroup",
						Hostname:        "h1",
						StopGracePeriod: durationpb.New(3 * time.Second),
					},
					Restart: &api.RestartPolicy{
						Condition:   api.RestartCondition_RESTART_CONDITION_ON_FAILURE,
						Delay:       durationpb.New(2 * time.Second),
						MaxDelay:    durationpb.New(time.Minute),
						MaxAttempts: 4,
					},
					Placement: &api.Placement{Constraints: []string{"node.labels.zone==eu", "node.role!=manager"}},
				},
				Mode: replicated(0),
			},
		},
		{
			name: "restart delay alone",
			args: []string{"--name", "web", "--restart-delay", "0s", "nginx"},
			want: &api.ServiceSpec{
				Name: "web",
				Task: &api.TaskSpec{
					Container: &api.ContainerSpec{Image: "nginx"},
					Restart:   &api.RestartPolicy{Delay: durationpb.New(0)},
				},
				Mode: replicated(1),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			args := append([]string{"service", "create", "-d"}, tt.args...)
			out, err := runCLI(t, f, args...)
			if err != nil {
				t.Fatal(err)
			}
			if out != "svcnewaaaaaaaaaaaaaaaaaaaa\n" {
				t.Errorf("output = %q, want the service id", out)
			}
			if len(f.created) != 1 {
				t.Fatalf("CreateService called %d times", len(f.created))
			}
			if !proto.Equal(f.created[0], tt.want) {
				t.Errorf("spec =\n%s\nwant\n%s", protojson.Format(f.created[0]), protojson.Format(tt.want))
			}
			if strings.Join(f.calls, ",") != "CreateService" {
				t.Errorf("calls = %v; -d must not wait", f.calls)
			}
		})
	}
}

func TestCreateServerError(t *testing.T) {
	f := newFixture()
	f.createErr = status.Error(codes.AlreadyExists, `service "web" already exists`)
	out, err := runCLI(t, f, "service", "create", "--name", "web", "nginx")
	if got := ErrorMessage(err); got != `service "web" already exists` {
		t.Errorf("error = %q, want the server's message alone", got)
	}
	if out != "" {
		t.Errorf("printed %q after a failed create", out)
	}
}
