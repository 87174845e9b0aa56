package ctl

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// createFlags are the flags of `service create`.
type createFlags struct {
	name               string
	replicas           int
	env                []string
	labels             []string
	constraints        []string
	networks           []string
	publish            []string
	endpointMode       string
	restartCondition   string
	restartDelay       time.Duration
	restartMaxDelay    time.Duration
	restartMaxAttempts uint64
	workdir            string
	user               string
	hostname           string
	entrypoint         string
	stopGracePeriod    time.Duration
	wait               waitFlags
	placement          placementFlags
}

func newServiceCreateCommand(c *cli) *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create [flags] IMAGE [ARG...]",
		Short: "Create a service",
		Long: `Create a service that runs IMAGE (with ARGs replacing the image's command)
and print its ID. --mode says how many tasks and where: replicated (--replicas
tasks, spread over the nodes), global (one on every eligible node, including
nodes that join later), replicated-job (tasks that run until --replicas of them
exited 0, --max-concurrent at a time) or global-job (one run to completion per
node).

` + convergeHelp,
		Example: `  shoalctl service create --name web --replicas 3 -e MODE=prod nginx:1.27
  shoalctl service create --name agent --mode global --limit-memory 256M agent:1
  shoalctl service create --name migrate --mode replicated-job --replicas 5 --max-concurrent 2 tool:1
  shoalctl service create --name web --placement-pref spread=node.labels.zone --reserve-memory 512M nginx:1.27
  shoalctl service create --name job --restart-condition none -d busybox sh -c 'echo hi'`,
		Args: minArgs(1, "an IMAGE argument"),
	}
	fs := cmd.Flags()
	// Flags after IMAGE belong to the container's command.
	fs.SetInterspersed(false)
	fs.StringVar(&f.name, "name", "", "service name (required): lower-case letters, digits and '-', starting with a letter")
	fs.IntVar(&f.replicas, "replicas", 1, "number of tasks (replicated-job: completions)")
	fs.StringArrayVarP(&f.env, "env", "e", nil, "set an environment variable KEY=VALUE (repeatable)")
	fs.StringArrayVar(&f.labels, "label", nil, "service label KEY=VALUE (repeatable)")
	fs.StringArrayVar(&f.constraints, "constraint", nil, "placement constraint such as node.labels.zone==eu (repeatable)")
	fs.StringArrayVar(&f.networks, "network", nil, "overlay network the tasks join, by name or id (repeatable)")
	fs.StringArrayVar(&f.publish, "publish", nil, "publish a port: PUBLISHED:TARGET[/udp], TARGET (a port is picked from 30000-32767), or published=,target=,protocol=,mode=ingress|host (repeatable)")
	fs.StringVar(&f.endpointMode, "endpoint-mode", "", "vip (default: a virtual IP per network) or dnsrr (DNS answers with the task addresses)")
	fs.StringVar(&f.restartCondition, "restart-condition", "", "when to replace a task that ended: any, on-failure or none (default any)")
	fs.DurationVar(&f.restartDelay, "restart-delay", 0, "wait before replacing a failed task")
	fs.DurationVar(&f.restartMaxDelay, "restart-max-delay", 0, "cap of the restart back-off (default 30s)")
	fs.Uint64Var(&f.restartMaxAttempts, "restart-max-attempts", 0, "give up on a slot after this many restarts (0: never)")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory in the container")
	fs.StringVarP(&f.user, "user", "u", "", "user (and group) to run as: USER[:GROUP]")
	fs.StringVar(&f.hostname, "hostname", "", "container hostname (default: the task's name)")
	fs.StringVar(&f.entrypoint, "entrypoint", "", "replace the image's entrypoint (split on spaces)")
	fs.DurationVar(&f.stopGracePeriod, "stop-grace-period", 0, "time between SIGTERM and SIGKILL (default 10s)")
	f.wait.register(fs)
	f.placement.addModeFlags(fs)
	f.placement.addPlacementFlags(fs)

	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		spec, err := f.spec(cmd.Flags(), args)
		if err != nil {
			return usageError{cmd: cmd, err: err}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.CreateService(cmd.Context(), &api.CreateServiceRequest{Spec: spec})
		if err != nil {
			return err
		}
		svc := resp.GetService()
		out := cmd.OutOrStdout()
		fmt.Fprintln(out, svc.GetId())
		if f.wait.detach {
			return nil
		}
		name := svc.GetSpec().GetName()
		return c.waitConverged(cmd.Context(), client, out, f.wait, waitRequest{
			service: svc,
			stays: fmt.Sprintf("service %s was created but did not converge; it stays: see `shoalctl service ps %s`, remove it with `shoalctl service rm %s`",
				name, name, name),
		})
	})
	return cmd
}

var (
	// serviceNameRE is the rule the managers apply to names (types.proto).
	serviceNameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	// envKeyRE is what a shell accepts as a variable name.
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// spec builds the service spec from the flags and arguments, or says what
// is wrong with them. Fields whose flags were not given stay unset so that
// the managers' defaults apply.
func (f *createFlags) spec(fs *pflag.FlagSet, args []string) (*api.ServiceSpec, error) {
	if len(args) == 0 || args[0] == "" {
		return nil, fmt.Errorf("missing IMAGE: usage: shoalctl service create [flags] IMAGE [ARG...]")
	}
	if f.name == "" {
		return nil, fmt.Errorf("--name is required: shoal does not make up service names")
	}
	if !serviceNameRE.MatchString(f.name) {
		return nil, fmt.Errorf("invalid --name %q: use at most 63 lower-case letters, digits and '-', starting with a letter", f.name)
	}
	if f.replicas < 0 {
		return nil, fmt.Errorf("--replicas must be 0 or more, got %d", f.replicas)
	}
	for _, e := range f.env {
		if err := checkEnv(e); err != nil {
			return nil, err
		}
	}
	labels, err := parseLabels("--label", f.labels)
	if err != nil {
		return nil, err
	}
	for _, expr := range f.constraints {
		if err := checkConstraint(expr); err != nil {
			return nil, err
		}
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{"--restart-delay", f.restartDelay},
		{"--restart-max-delay", f.restartMaxDelay},
		{"--stop-grace-period", f.stopGracePeriod},
	} {
		if d.value < 0 {
			return nil, fmt.Errorf("%s must not be negative, got %s", d.flag, d.value)
		}
	}
	if f.wait.timeout < 0 {
		return nil, fmt.Errorf("--timeout must not be negative, got %s", f.wait.timeout)
	}

	container := &api.ContainerSpec{
		Image:    args[0],
		Args:     args[1:],
		Env:      f.env,
		Dir:      f.workdir,
		User:     f.user,
		Hostname: f.hostname,
		Command:  strings.Fields(f.entrypoint),
	}
	if len(container.Args) == 0 {
		container.Args = nil
	}
	if fs.Changed("stop-grace-period") {
		container.StopGracePeriod = durationpb.New(f.stopGracePeriod)
	}
	task := &api.TaskSpec{Container: container}

	if fs.Changed("restart-condition") || fs.Changed("restart-delay") ||
		fs.Changed("restart-max-delay") || fs.Changed("restart-max-attempts") {
		restart := &api.RestartPolicy{MaxAttempts: f.restartMaxAttempts}
		if fs.Changed("restart-condition") {
			cond, err := parseRestartCondition(f.restartCondition)
			if err != nil {
				return nil, err
			}
			restart.Condition = cond
		}
		if fs.Changed("restart-delay") {
			restart.Delay = durationpb.New(f.restartDelay)
		}
		if fs.Changed("restart-max-delay") {
			restart.MaxDelay = durationpb.New(f.restartMaxDelay)
		}
		task.Restart = restart
	}
	if len(f.constraints) > 0 {
		task.Placement = &api.Placement{Constraints: f.constraints}
	}
	var endpoint *api.EndpointSpec
	if len(f.publish) > 0 || f.endpointMode != "" {
		endpoint = &api.EndpointSpec{Mode: f.endpointMode}
		switch f.endpointMode {
		case "", "vip", "dnsrr":
		default:
			return nil, fmt.Errorf("invalid --endpoint-mode %q: want vip or dnsrr", f.endpointMode)
		}
		for _, p := range f.publish {
			pc, err := api.ParsePublish(p)
			if err != nil {
				return nil, fmt.Errorf("invalid --publish %q: %w", p, err)
			}
			endpoint.Ports = append(endpoint.Ports, pc)
		}
	}
	spec := &api.ServiceSpec{
		Name:     f.name,
		Labels:   labels,
		Task:     task,
		Mode:     &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: uint64(f.replicas)}},
		Networks: f.networks,
		Endpoint: endpoint,
	}
	if err := f.placement.apply(fs, spec); err != nil {
		return nil, err
	}
	return spec, nil
}

// checkEnv accepts KEY=VALUE with a shell variable name as KEY.
func checkEnv(kv string) error {
	key, _, ok := strings.Cut(kv, "=")
	if !ok || !envKeyRE.MatchString(key) {
		return fmt.Errorf("invalid --env %q: want KEY=VALUE", kv)
	}
	return nil
}

// parseLabels reads KEY=VALUE pairs; a bare KEY has an empty value, as in
// Docker.
func parseLabels(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	labels := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		key, value, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(key) == "" {
			return nil, fmt.Errorf("invalid %s %q: want KEY=VALUE", flag, kv)
		}
		labels[key] = value
	}
	return labels, nil
}

// checkConstraint checks the shape of a placement constraint; which keys
// exist is the managers' business.
func checkConstraint(expr string) error {
	for _, op := range []string{"==", "!="} {
		if key, value, ok := strings.Cut(expr, op); ok && strings.TrimSpace(key) != "" && strings.TrimSpace(value) != "" {
			return nil
		}
	}
	return fmt.Errorf("invalid --constraint %q: want KEY==VALUE or KEY!=VALUE (for example node.labels.zone==eu)", expr)
}

func parseRestartCondition(s string) (api.RestartCondition, error) {
	switch s {
	case "any":
		return api.RestartCondition_RESTART_CONDITION_ANY, nil
	case "on-failure":
		return api.RestartCondition_RESTART_CONDITION_ON_FAILURE, nil
	case "none":
		return api.RestartCondition_RESTART_CONDITION_NONE, nil
	}
	return 0, fmt.Errorf("invalid --restart-condition %q: want any, on-failure or none", s)
}
