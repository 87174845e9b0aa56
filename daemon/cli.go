package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager"
	ctrexec "github.com/shoal-project/shoal/worker/exec/containerd"
)

// Main runs shoald with its arguments and returns the exit code.
func Main(args []string) int {
	cmd := newCommand()
	cmd.SetArgs(args)
	err := cmd.Execute()
	if errors.Is(err, ErrRoleChanged) {
		// Start over as `shoald run` in the new role; running containers
		// are adopted as after any restart.
		err = reexec(lastConfig)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "shoald:", err)
		return 1
	}
	return 0
}

// lastConfig is the configuration the command ran with, for reexec.
var lastConfig Config

func reexec(cfg Config) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restart in the new role: %w", err)
	}
	args := []string{self, "run",
		"--data-dir", cfg.DataDir, "--socket", cfg.Socket,
		"--containerd-address", cfg.ContainerdAddress, "--containerd-namespace", cfg.ContainerdNamespace,
		"--listen-addr", cfg.ListenAddr, "--log-level", cfg.LogLevel, "--lb-backend", cfg.LBBackend, "--drain-delay", cfg.DrainDelay.String(),
	}
	if cfg.Hostname != "" {
		args = append(args, "--hostname", cfg.Hostname)
	}
	if cfg.AdvertiseAddr != "" {
		args = append(args, "--advertise-addr", cfg.AdvertiseAddr)
	}
	if cfg.HeartbeatPeriod > 0 {
		args = append(args, "--heartbeat-period", cfg.HeartbeatPeriod.String())
	}
	if cfg.TaskLogDir != "" {
		args = append(args, "--task-log-dir", cfg.TaskLogDir)
	}
	if cfg.TaskLogMaxSize > 0 {
		args = append(args, "--task-log-max-size", strconv.FormatInt(cfg.TaskLogMaxSize, 10))
	}
	if cfg.TaskLogMaxFiles > 0 {
		args = append(args, "--task-log-max-files", strconv.Itoa(cfg.TaskLogMaxFiles))
	}
	if cfg.HeartbeatGrace > 0 {
		args = append(args, "--heartbeat-grace", cfg.HeartbeatGrace.String())
	}
	return syscall.Exec(self, args, os.Environ())
}

func newCommand() *cobra.Command {
	var (
		cfg      Config
		logLevel string
		token    string
		force    bool
		// taskLogMaxSize is parsed into cfg.TaskLogMaxSize.
		taskLogMaxSize string
	)
	root := &cobra.Command{
		Use:           "shoald",
		Short:         "The shoal node daemon",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	flags := root.PersistentFlags()
	flags.StringVar(&cfg.DataDir, "data-dir", DefaultDataDir, "where the node keeps its state")
	flags.StringVar(&cfg.Socket, "socket", DefaultSocket, "unix socket of the control API (mode 0600)")
	flags.StringVar(&cfg.ContainerdAddress, "containerd-address", DefaultContainerd, "containerd's socket")
	flags.StringVar(&cfg.ContainerdNamespace, "containerd-namespace", DefaultNamespace, "containerd namespace of this node's containers")
	flags.StringVar(&cfg.Hostname, "hostname", "", "name of this node (default: the host's name)")
	flags.DurationVar(&cfg.HeartbeatPeriod, "heartbeat-period", 0, "how often workers heartbeat, jittered ±10% (managers; default 750ms)")
	flags.DurationVar(&cfg.DrainDelay, "drain-delay", DefaultDrainDelay, "how long a task with published ports or networks keeps running after it is told to stop, while every node takes it out of its load balancers (0: stop at once)")
	flags.StringVar(&cfg.LBBackend, "lb-backend", "auto", "routing mesh load balancer: auto (ipvs where the kernel has IPVS, else nftables), nftables or ipvs")
	flags.DurationVar(&cfg.HeartbeatGrace, "heartbeat-grace", 0, "how long a silent node stays Ready before it is marked down and its tasks replaced (managers; default 3 heartbeat periods)")
	flags.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flags.StringVar(&cfg.TaskLogDir, "task-log-dir", "", "where tasks' stdout and stderr go (default: DATA-DIR/logs); another file system keeps a chatty task away from raft")
	flags.StringVar(&taskLogMaxSize, "task-log-max-size", "10M", "size at which a task's log file is rotated (bytes, or with a unit: 512K, 10M)")
	flags.IntVar(&cfg.TaskLogMaxFiles, "task-log-max-files", ctrexec.DefaultLogMaxFiles, "files a task's log may span, the live one included (1: keep no rotated parts)")
	flags.StringVar(&cfg.ListenAddr, "listen-addr", DefaultListenAddr, "the cluster port: gRPC and raft, mutual TLS only")
	flags.StringVar(&cfg.AdvertiseAddr, "advertise-addr", "", "address other nodes reach this one at (IP[:port]; default: the listen address, or this host's address on its default route)")

	run := func(fn func(context.Context, Config) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			size, err := api.ParseBytes(taskLogMaxSize)
			if err != nil || size < 1<<10 {
				return fmt.Errorf("--task-log-max-size %q: want a size of at least 1K, such as 10M", taskLogMaxSize)
			}
			cfg.TaskLogMaxSize = size
			if cfg.TaskLogMaxFiles < 1 {
				return fmt.Errorf("--task-log-max-files %d: want 1 or more", cfg.TaskLogMaxFiles)
			}
			if cfg.TaskLogDir != "" && !filepath.IsAbs(cfg.TaskLogDir) {
				return fmt.Errorf("--task-log-dir %q: want an absolute path (containerd's shim opens the files)", cfg.TaskLogDir)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.LogLevel = logLevel
			lastConfig = cfg
			slog.SetDefault(cfg.Logger)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return fn(ctx, cfg)
		}
	}
	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Run this node from its data dir (after `shoald init`, `shoald join` or a restart)",
		Long: `Run this node from its data dir.

--force-new-cluster is the way out for a cluster that lost its raft quorum for
good: run it on one surviving manager; it becomes the only manager, with all
the state it had, and the other managers are recorded as workers. Join or
promote managers again afterwards. See docs/recovery.md.`,
		Args: cobra.NoArgs,
		RunE: run(Run),
	}
	runCmd.Flags().BoolVar(&cfg.ForceNewCluster, "force-new-cluster", false, "make this manager the only raft member, keeping the state (after a lost quorum)")
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a new cluster with this node as its first manager, then run the node",
		Args:  cobra.NoArgs,
		RunE:  run(Init),
	}
	initCmd.Flags().StringVar(&cfg.IngressName, "ingress-name", manager.DefaultIngressName, "name of the routing mesh's network")
	initCmd.Flags().StringVar(&cfg.IngressSubnet, "ingress-subnet", "", "subnet of the routing mesh's network (default: the first free /24 of 10.0.0.0/8)")
	initCmd.Flags().Uint32Var(&cfg.IngressVNI, "ingress-vni", 0, "VXLAN id of the routing mesh's network (default: the first free one from 4096)")
	root.AddCommand(initCmd, &cobra.Command{
		Use:   "join --token TOKEN MANAGER_ADDR",
		Short: "Join an existing cluster through one of its managers, then run the node",
		Long: `Join an existing cluster. The token (from ` + "`shoalctl cluster join-token worker|manager`" + `)
decides the role and names the cluster's CA: the node trusts the manager only if the
CA it presents has that digest.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if token == "" {
				return fmt.Errorf("--token is required: get one with `shoalctl cluster join-token worker` on a manager")
			}
			return run(func(ctx context.Context, cfg Config) error { return Join(ctx, cfg, token, args[0]) })(cmd, args)
		},
	}, runCmd)
	root.AddCommand(&cobra.Command{
		Use:   "unlock",
		Short: "Give a locked manager the cluster's unlock key (autolock)",
		Long: `Unlock a manager of a cluster with autolock on. A restarted manager keeps its
raft state encrypted and serves nothing until it gets the cluster's unlock key
(` + "`shoalctl cluster unlock-key`" + ` on a running manager prints it). The key is read from
standard input, never from the command line:

    shoald unlock          # then paste the key
    shoald unlock < key    # or pipe it

A wrong key is refused and the manager stays locked. After a rotation, a manager
that was down needs the key that was current when it stopped.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprint(cmd.ErrOrStderr(), "Unlock key: ")
			key, err := readUnlockKey(cmd.InOrStdin())
			if err != nil {
				return err
			}
			if err := Unlock(cmd.Context(), cfg, key); err != nil {
				return err
			}
			fmt.Fprintln(cmd.ErrOrStderr(), "unlocked")
			return nil
		},
	})
	leaveCmd := &cobra.Command{
		Use:   "leave [--force]",
		Short: "Leave the cluster and remove this node's state from this host",
		Long: `Leave the cluster: the managers remove this node (it is gone from ` + "`shoalctl node ls`" + `, and its
tasks are started elsewhere), then its shoald is stopped, and its containers, images and
containerd namespace, its network state (overlay bridges and VXLAN devices, task
interfaces, shoal's nftables tables and IPVS services) and its data dir are removed.
Drain the node first (` + "`shoalctl node update --availability drain NODE`" + `) to move its tasks
before they stop.

A manager must be demoted first; the last manager cannot leave, since that ends the cluster.
--force leaves even when no manager answers (the node then shows as down until
` + "`shoalctl node rm --force`" + `), demotes a manager first (refused when the other managers would
lose their quorum), and on the last manager ends the cluster.`,
		Args: cobra.NoArgs,
		RunE: run(func(ctx context.Context, cfg Config) error { return Leave(ctx, cfg, force) }),
	}
	leaveCmd.Flags().BoolVar(&force, "force", false, "leave without the managers, demote a manager first, or end the cluster on its last manager")
	root.AddCommand(leaveCmd)
	for _, c := range root.Commands() {
		if c.Name() == "join" {
			c.Flags().StringVar(&token, "token", "", "join token (SHOAL-1-...)")
		}
	}
	return root
}
