package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs shoald with its arguments and returns the exit code.
func Main(args []string) int {
	cmd := newCommand()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "shoald:", err)
		return 1
	}
	return 0
}

func newCommand() *cobra.Command {
	var (
		cfg      Config
		logLevel string
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
	flags.DurationVar(&cfg.HeartbeatPeriod, "heartbeat-period", 0, "how often workers heartbeat (default 1s); a node is down after 3 missed periods")
	flags.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")

	run := func(fn func(context.Context, Config) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			slog.SetDefault(cfg.Logger)
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return fn(ctx, cfg)
		}
	}
	root.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Create a new cluster with this node as its first manager, then run the node",
		Args:  cobra.NoArgs,
		RunE:  run(Init),
	}, &cobra.Command{
		Use:   "run",
		Short: "Run this node from its data dir (after `shoald init` or a restart)",
		Args:  cobra.NoArgs,
		RunE:  run(Run),
	})
	return root
}
