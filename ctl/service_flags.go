package ctl

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// specFlags are the flags that set a service's spec, shared by `service
// create` and `service update`: a spec field gets its flag here, once, and
// both commands have it. A list is --NAME on create (the whole list) and
// --NAME-add / --NAME-rm on update (a change to it), as Docker names them.
// A flag that was not given leaves its field as it is: unset on create,
// so that the managers' defaults apply, and as the service has it on
// update.
type specFlags struct {
	update bool // the flags of service update, else service create

	replicas           int
	env                listFlag
	labels             listFlag
	constraints        listFlag
	networks           listFlag
	publish            listFlag
	endpointMode       string
	restartCondition   string
	restartDelay       time.Duration
	restartMaxDelay    time.Duration
	restartMaxAttempts uint64
	restartWindow      time.Duration
	workdir            string
	user               string
	hostname           string
	entrypoint         string
	stopGracePeriod    time.Duration
	updateConfig       rolloutFlags
	rollbackConfig     rolloutFlags

	// Only service update has these: create takes IMAGE and ARGs as
	// arguments, and has nothing to force.
	image string
	args  string
	force bool

	names []string // of the flags registered
}

// listFlag is a list flag's values: what to add (create: the list) and,
// on update, what to remove.
type listFlag struct{ add, rm []string }

// rolloutFlags are the --update-* or --rollback-* flags.
type rolloutFlags struct {
	prefix          string // "update" or "rollback"
	parallelism     int
	delay           time.Duration
	monitor         time.Duration
	order           string
	failureAction   string
	maxFailureRatio float32
}

func (f *specFlags) register(fs *pflag.FlagSet) {
	before := map[string]bool{}
	fs.VisitAll(func(fl *pflag.Flag) { before[fl.Name] = true })
	defer fs.VisitAll(func(fl *pflag.Flag) {
		if !before[fl.Name] {
			f.names = append(f.names, fl.Name)
		}
	})
	list := func(l *listFlag, name, short, usage, rmUsage string) {
		if !f.update {
			fs.StringArrayVarP(&l.add, name, short, nil, usage+" (repeatable)")
			return
		}
		fs.StringArrayVar(&l.add, name+"-add", nil, "add "+usage+" (repeatable)")
		fs.StringArrayVar(&l.rm, name+"-rm", nil, rmUsage+" (repeatable)")
	}
	fs.IntVar(&f.replicas, "replicas", 1, "number of tasks (replicated-job: completions)")
	list(&f.env, "env", "e", "an environment variable KEY=VALUE", "remove the environment variable KEY")
	list(&f.labels, "label", "", "a service label KEY=VALUE", "remove the service label KEY")
	list(&f.constraints, "constraint", "", "a placement constraint such as node.labels.zone==eu", "remove a placement constraint, as given")
	list(&f.networks, "network", "", "an overlay network the tasks join, by name or id", "leave an overlay network, by name or id")
	list(&f.publish, "publish", "", "a published port: PUBLISHED:TARGET[/udp], TARGET (a port is picked from 30000-32767), or published=,target=,protocol=,mode=ingress|host",
		"unpublish a port: TARGET[/udp] (every port to it) or PUBLISHED:TARGET[/udp]")
	fs.StringVar(&f.endpointMode, "endpoint-mode", "", "vip (default: a virtual IP per network) or dnsrr (DNS answers with the task addresses)")
	fs.StringVar(&f.restartCondition, "restart-condition", "", "when to replace a task that ended: any, on-failure or none (default any)")
	fs.DurationVar(&f.restartDelay, "restart-delay", 0, "wait before replacing a failed task")
	fs.DurationVar(&f.restartMaxDelay, "restart-max-delay", 0, "cap of the restart back-off (default 30s)")
	fs.Uint64Var(&f.restartMaxAttempts, "restart-max-attempts", 0, "give up on a slot after this many restarts (0: never)")
	fs.DurationVar(&f.restartWindow, "restart-window", 0, "count only the restarts of this last window towards --restart-max-attempts (0: all)")
	fs.StringVarP(&f.workdir, "workdir", "w", "", "working directory in the container")
	fs.StringVarP(&f.user, "user", "u", "", "user (and group) to run as: USER[:GROUP]")
	fs.StringVar(&f.hostname, "hostname", "", "container hostname (default: the task's name)")
	fs.StringVar(&f.entrypoint, "entrypoint", "", "replace the image's entrypoint (split on spaces)")
	fs.DurationVar(&f.stopGracePeriod, "stop-grace-period", 0, "time between SIGTERM and SIGKILL (default 10s)")
	f.updateConfig.register(fs, "update", "an update")
	f.rollbackConfig.register(fs, "rollback", "a rollback")
	if f.update {
		fs.StringVar(&f.image, "image", "", "run this image")
		fs.StringVar(&f.args, "args", "", "replace the command's arguments (split on spaces; \"\" for the image's)")
		fs.BoolVar(&f.force, "force", false, "replace every task even if the spec did not change")
	}
}

func (r *rolloutFlags) register(fs *pflag.FlagSet, prefix, what string) {
	r.prefix = prefix
	fs.IntVar(&r.parallelism, prefix+"-parallelism", api.DefaultUpdateParallelism, "slots replaced at once by "+what+" (0: all)")
	fs.DurationVar(&r.delay, prefix+"-delay", 0, "wait after a slot's new task runs before its place goes to the next slot")
	fs.DurationVar(&r.monitor, prefix+"-monitor", api.DefaultUpdateMonitor, "how long a new task must run to count as updated")
	fs.StringVar(&r.order, prefix+"-order", api.UpdateOrderStopFirst, "stop-first (old task stops, then the new one starts) or start-first")
	actions := "pause, continue or rollback"
	if prefix == "rollback" {
		actions = "pause or continue"
	}
	fs.StringVar(&r.failureAction, prefix+"-failure-action", api.FailureActionPause, "what to do when too many new tasks fail: "+actions)
	fs.Float32Var(&r.maxFailureRatio, prefix+"-max-failure-ratio", 0, "fraction of failed slots (0 to 1) tolerated before the failure action")
}

// given reports whether any flag of the group was given.
func (r *rolloutFlags) given(fs *pflag.FlagSet) bool {
	for _, name := range []string{"parallelism", "delay", "monitor", "order", "failure-action", "max-failure-ratio"} {
		if fs.Changed(r.prefix + "-" + name) {
			return true
		}
	}
	return false
}

// check says what is wrong with the values given, before any RPC.
func (f *specFlags) check(fs *pflag.FlagSet) error {
	if f.replicas < 0 {
		return fmt.Errorf("--replicas must be 0 or more, got %d", f.replicas)
	}
	addFlag := func(name string) string {
		if f.update {
			return "--" + name + "-add"
		}
		return "--" + name
	}
	for _, e := range f.env.add {
		if err := checkEnv(addFlag("env"), e); err != nil {
			return err
		}
	}
	if _, err := parseLabels(addFlag("label"), f.labels.add); err != nil {
		return err
	}
	for _, keys := range []struct {
		flag, what string
		keys       []string
	}{{"--env-rm", "variable", f.env.rm}, {"--label-rm", "label", f.labels.rm}} {
		for _, key := range keys.keys {
			if err := checkKey(keys.flag, keys.what, key); err != nil {
				return err
			}
		}
	}
	for _, expr := range f.constraints.add {
		if err := checkConstraint(addFlag("constraint"), expr); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{"--restart-delay", f.restartDelay},
		{"--restart-max-delay", f.restartMaxDelay},
		{"--restart-window", f.restartWindow},
		{"--stop-grace-period", f.stopGracePeriod},
	} {
		if d.value < 0 {
			return fmt.Errorf("%s must not be negative, got %s", d.flag, d.value)
		}
	}
	if fs.Changed("restart-condition") {
		if _, err := parseRestartCondition(f.restartCondition); err != nil {
			return err
		}
	}
	switch f.endpointMode {
	case "", "vip", "dnsrr":
	default:
		return fmt.Errorf("invalid --endpoint-mode %q: want vip or dnsrr", f.endpointMode)
	}
	if _, err := parsePorts(addFlag("publish"), f.publish.add); err != nil {
		return err
	}
	if _, err := parsePorts("--publish-rm", f.publish.rm); err != nil {
		return err
	}
	if err := f.updateConfig.check(); err != nil {
		return err
	}
	return f.rollbackConfig.check()
}

func (r *rolloutFlags) check() error {
	flag := "--" + r.prefix
	if r.parallelism < 0 {
		return fmt.Errorf("%s-parallelism must be 0 or more (0: every slot at once), got %d", flag, r.parallelism)
	}
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"-delay", r.delay}, {"-monitor", r.monitor}} {
		if d.value < 0 {
			return fmt.Errorf("%s%s must not be negative, got %s", flag, d.name, d.value)
		}
	}
	if r.maxFailureRatio < 0 || r.maxFailureRatio > 1 || r.maxFailureRatio != r.maxFailureRatio {
		return fmt.Errorf("%s-max-failure-ratio must be a fraction from 0 to 1, got %g", flag, r.maxFailureRatio)
	}
	if _, err := api.ParseUpdateOrder(r.order); err != nil {
		return fmt.Errorf("invalid %s-order %q: want %s or %s", flag, r.order, api.UpdateOrderStopFirst, api.UpdateOrderStartFirst)
	}
	action, err := api.ParseFailureAction(r.failureAction)
	if err == nil && r.prefix == "rollback" && action == api.UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK {
		err = errors.New("a rollback is not rolled back")
	}
	if err != nil {
		want := "pause, continue or rollback"
		if r.prefix == "rollback" {
			want = "pause or continue"
		}
		return fmt.Errorf("invalid %s-failure-action %q: want %s", flag, r.failureAction, want)
	}
	return nil
}

// given reports whether any spec flag was given.
func (f *specFlags) given(fs *pflag.FlagSet) bool {
	return slices.ContainsFunc(f.names, fs.Changed)
}

// apply changes spec as the flags given say; check has passed.
// networkID, on update, resolves a --network-rm to the id the spec holds.
func (f *specFlags) apply(fs *pflag.FlagSet, spec *api.ServiceSpec, networkID func(ref string) string) error {
	if fs.Changed("replicas") && f.update {
		switch {
		case spec.GetReplicated() != nil:
			spec.GetReplicated().Replicas = uint64(f.replicas)
		case spec.GetReplicatedJob() != nil:
			spec.GetReplicatedJob().TotalCompletions = uint64(f.replicas)
		case api.IsGlobal(spec):
			return fmt.Errorf("--replicas: service %s is %s: it runs one task on every eligible node", spec.GetName(), api.ModeName(spec))
		default:
			return fmt.Errorf("--replicas: service %s is not a replicated service", spec.GetName())
		}
	}
	if spec.Task == nil {
		spec.Task = &api.TaskSpec{}
	}
	task := spec.Task
	if task.Container == nil {
		task.Container = &api.ContainerSpec{}
	}
	c := task.Container
	c.Env = editEnv(c.Env, f.env.add, f.env.rm)
	labels, _ := parseLabels("", f.labels.add)
	spec.Labels = editLabels(spec.Labels, labels, f.labels.rm)
	if cs := editList(task.GetPlacement().GetConstraints(), f.constraints.add, f.constraints.rm, nil); len(cs) > 0 || task.Placement != nil {
		if task.Placement == nil {
			task.Placement = &api.Placement{}
		}
		task.Placement.Constraints = cs
	}
	spec.Networks = editList(spec.Networks, f.networks.add, f.networks.rm, networkID)
	if err := f.applyEndpoint(fs, spec); err != nil {
		return err
	}
	set := func(name string, dst *string, v string) {
		if fs.Changed(name) {
			*dst = v
		}
	}
	set("workdir", &c.Dir, f.workdir)
	set("user", &c.User, f.user)
	set("hostname", &c.Hostname, f.hostname)
	set("image", &c.Image, f.image)
	if fs.Changed("entrypoint") {
		c.Command = strings.Fields(f.entrypoint)
	}
	if fs.Changed("args") {
		c.Args = strings.Fields(f.args)
	}
	if fs.Changed("stop-grace-period") {
		c.StopGracePeriod = durationpb.New(f.stopGracePeriod)
	}
	f.applyRestart(fs, task)
	spec.Update = f.updateConfig.apply(fs, spec.Update)
	spec.Rollback = f.rollbackConfig.apply(fs, spec.Rollback)
	if f.force {
		task.ForceUpdate++
	}
	return nil
}

func (f *specFlags) applyRestart(fs *pflag.FlagSet, task *api.TaskSpec) {
	if !fs.Changed("restart-condition") && !fs.Changed("restart-delay") && !fs.Changed("restart-max-delay") &&
		!fs.Changed("restart-max-attempts") && !fs.Changed("restart-window") {
		return
	}
	restart := proto.CloneOf(task.Restart)
	if restart == nil {
		restart = &api.RestartPolicy{}
	}
	if fs.Changed("restart-condition") {
		restart.Condition, _ = parseRestartCondition(f.restartCondition)
	}
	if fs.Changed("restart-delay") {
		restart.Delay = durationpb.New(f.restartDelay)
	}
	if fs.Changed("restart-max-delay") {
		restart.MaxDelay = durationpb.New(f.restartMaxDelay)
	}
	if fs.Changed("restart-max-attempts") {
		restart.MaxAttempts = f.restartMaxAttempts
	}
	if fs.Changed("restart-window") {
		restart.Window = durationpb.New(f.restartWindow)
	}
	task.Restart = restart
}

// applyEndpoint changes the published ports and the endpoint mode.
func (f *specFlags) applyEndpoint(fs *pflag.FlagSet, spec *api.ServiceSpec) error {
	if len(f.publish.add) == 0 && len(f.publish.rm) == 0 && !fs.Changed("endpoint-mode") {
		return nil
	}
	ep := proto.CloneOf(spec.Endpoint)
	if ep == nil {
		ep = &api.EndpointSpec{}
	}
	if fs.Changed("endpoint-mode") {
		ep.Mode = f.endpointMode
	}
	rm, _ := parsePorts("", f.publish.rm)
	add, _ := parsePorts("", f.publish.add)
	ep.Ports = slices.DeleteFunc(ep.Ports, func(p *api.PortConfig) bool {
		for _, r := range append(rm, add...) {
			n, err := api.NormalizePort(p)
			if err == nil && n.GetProtocol() == r.GetProtocol() && samePort(n, r) {
				return true
			}
		}
		return false
	})
	ep.Ports = append(ep.Ports, add...)
	spec.Endpoint = ep
	return nil
}

// samePort reports whether a published port is the one r names: by its
// published port when r gives one (a port added replaces the one it
// publishes on), else by its target.
func samePort(p, r *api.PortConfig) bool {
	if r.GetPublished() != 0 {
		return p.GetPublished() == r.GetPublished()
	}
	return p.GetTarget() == r.GetTarget()
}

// apply returns cur with the flags given set; cur when none was, else the
// defaults where cur is unset.
func (r *rolloutFlags) apply(fs *pflag.FlagSet, cur *api.UpdateConfig) *api.UpdateConfig {
	if !r.given(fs) {
		return cur
	}
	c := proto.CloneOf(cur)
	if c == nil {
		c = api.DefaultUpdateConfig()
	}
	name := func(flag string) string { return r.prefix + "-" + flag }
	if fs.Changed(name("parallelism")) {
		c.Parallelism = uint64(r.parallelism)
	}
	if fs.Changed(name("delay")) {
		c.Delay = durationpb.New(r.delay)
	}
	if fs.Changed(name("monitor")) {
		c.Monitor = durationpb.New(r.monitor)
	}
	if fs.Changed(name("order")) {
		c.Order, _ = api.ParseUpdateOrder(r.order)
	}
	if fs.Changed(name("failure-action")) {
		c.FailureAction, _ = api.ParseFailureAction(r.failureAction)
	}
	if fs.Changed(name("max-failure-ratio")) {
		c.MaxFailureRatio = r.maxFailureRatio
	}
	return c
}

// parsePorts reads --publish values.
func parsePorts(flag string, values []string) ([]*api.PortConfig, error) {
	var ports []*api.PortConfig
	for _, p := range values {
		pc, err := api.ParsePublish(p)
		if err != nil {
			return nil, fmt.Errorf("invalid %s %q: %w", flag, p, err)
		}
		ports = append(ports, pc)
	}
	return ports, nil
}

// editEnv removes the variables named by rm and by add from env, then
// appends add: a variable added replaces its old value.
func editEnv(env, add, rm []string) []string {
	drop := slices.Clone(rm)
	for _, kv := range add {
		key, _, _ := strings.Cut(kv, "=")
		drop = append(drop, key)
	}
	env = slices.DeleteFunc(slices.Clone(env), func(kv string) bool {
		key, _, _ := strings.Cut(kv, "=")
		return slices.Contains(drop, key)
	})
	return append(env, add...)
}

// editList removes rm from list, then appends what of add it lacks; id,
// when set, says which entry a reference in rm stands for.
func editList(list, add, rm []string, id func(string) string) []string {
	list = slices.DeleteFunc(slices.Clone(list), func(v string) bool {
		return slices.ContainsFunc(rm, func(r string) bool { return r == v || (id != nil && id(r) == v) })
	})
	had := len(list)
	for _, v := range add {
		if !slices.Contains(list[:had], v) {
			list = append(list, v)
		}
	}
	if len(list) == 0 {
		return nil
	}
	return list
}

// editLabels sets add and deletes rm in labels, without changing labels
// itself; no labels is nil.
func editLabels(labels, add map[string]string, rm []string) map[string]string {
	out := maps.Clone(labels)
	for _, k := range rm {
		delete(out, k)
	}
	if len(add) > 0 && out == nil {
		out = make(map[string]string, len(add))
	}
	maps.Copy(out, add)
	if len(out) == 0 {
		return nil
	}
	return out
}

// checkKey accepts the KEY a --*-rm flag names, of a label or a variable
// (what).
func checkKey(flag, what, key string) error {
	if strings.TrimSpace(key) == "" || strings.Contains(key, "=") {
		return fmt.Errorf("invalid %s %q: want the KEY of a %s", flag, key, what)
	}
	return nil
}
