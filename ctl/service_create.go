package ctl

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// createFlags are the flags of `service create`: its name, the spec
// flags it shares with `service update`, and how to wait.
type createFlags struct {
	name      string
	flags     specFlags
	wait      waitFlags
	placement placementFlags
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
  shoalctl service create --name job --restart-condition none -d busybox sh -c 'echo hi'
  shoalctl service create --name api --health-cmd 'curl -f http://localhost/' --health-interval 5s IMAGE
  shoalctl service create --name agent --mode global --limit-memory 256M agent:1
  shoalctl service create --name migrate --mode replicated-job --replicas 5 --max-concurrent 2 tool:1
  shoalctl service create --name web --placement-pref spread=node.labels.zone --reserve-memory 512M nginx:1.27`,
		Args: minArgs(1, "an IMAGE argument"),
	}
	fs := cmd.Flags()
	// Flags after IMAGE belong to the container's command.
	fs.SetInterspersed(false)
	fs.StringVar(&f.name, "name", "", "service name (required): lower-case letters, digits and '-', starting with a letter")
	f.flags.register(fs)
	f.placement.addModeFlags(fs)
	f.placement.addPlacementFlags(fs)
	f.wait.register(fs)
	health := addHealthFlags(fs)

	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		spec, err := f.spec(cmd.Flags(), args)
		if err == nil {
			err = health.apply(spec)
		}
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
	if err := f.flags.check(fs); err != nil {
		return nil, err
	}
	if f.wait.timeout < 0 {
		return nil, fmt.Errorf("--timeout must not be negative, got %s", f.wait.timeout)
	}
	spec := &api.ServiceSpec{
		Name: f.name,
		Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: args[0], Args: args[1:]}},
		Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: uint64(f.flags.replicas)}},
	}
	if len(args) == 1 {
		spec.Task.Container.Args = nil
	}
	if err := f.flags.apply(fs, spec, nil); err != nil {
		return nil, err
	}
	if err := f.placement.apply(fs, spec); err != nil {
		return nil, err
	}
	return spec, nil
}

// checkEnv accepts KEY=VALUE with a shell variable name as KEY.
func checkEnv(flag, kv string) error {
	key, _, ok := strings.Cut(kv, "=")
	if !ok || !envKeyRE.MatchString(key) {
		return fmt.Errorf("invalid %s %q: want KEY=VALUE", flag, kv)
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
func checkConstraint(flag, expr string) error {
	for _, op := range []string{"==", "!="} {
		if key, value, ok := strings.Cut(expr, op); ok && strings.TrimSpace(key) != "" && strings.TrimSpace(value) != "" {
			return nil
		}
	}
	return fmt.Errorf("invalid %s %q: want KEY==VALUE or KEY!=VALUE (for example node.labels.zone==eu)", flag, expr)
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
