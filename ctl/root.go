package ctl

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

const (
	// defaultSocket is where shoald serves the Control API to local root.
	defaultSocket = "/run/shoal/shoald.sock"
	// socketEnv overrides defaultSocket; the --socket flag overrides both.
	socketEnv = "SHOAL_SOCKET"

	// hostEnv names remote managers (HOST[:PORT], several separated by
	// commas) like --host; either one replaces the unix socket with
	// mutual TLS over TCP.
	hostEnv = "SHOAL_HOST"
	// defaultTLSDir is where `shoald init` writes the admin credentials
	// (<data-dir>/admin with the default data dir).
	defaultTLSDir = "/var/lib/shoal/admin"
	// tlsDirEnv overrides defaultTLSDir; the --tls-dir flag overrides both.
	tlsDirEnv = "SHOAL_TLS_DIR"
)

// env is what the commands take from the world outside the process. The
// real one dials shoald; tests put a fake api.ControlClient and a fixed
// clock behind it.
type env struct {
	// connect is called only by commands that need the daemon, and only
	// after their arguments were checked, so --help and argument errors
	// never need a server.
	connect func(ctx context.Context, ts targets) (api.ControlClient, io.Closer, error)
	// now is the clock for "Running 3 seconds ago".
	now func() time.Time
	// isTerminal says whether progress may be redrawn in place on w.
	isTerminal func(w io.Writer) bool
	getenv     func(key string) string
	// labSockets are the sockets of the managers of the lab that is up,
	// none if none is (nil: none).
	labSockets func() []string
}

func realEnv() env {
	memory := defaultMemory()
	return env{
		connect: func(ctx context.Context, ts targets) (api.ControlClient, io.Closer, error) {
			return dialTargets(ctx, ts, memory)
		},
		now:        time.Now,
		isTerminal: isTerminal,
		getenv:     os.Getenv,
		labSockets: labSockets,
	}
}

// NewRootCommand returns the shoalctl command tree. It talks to the
// managers named by --host (or $SHOAL_HOST) over mutual TLS, else to the
// shoald at --socket (or $SHOAL_SOCKET), else to a lab's managers, once a
// command needs it.
//
// Errors are returned, not printed: the caller prints ErrorMessage(err).
func NewRootCommand() *cobra.Command {
	return newRootCommand(realEnv())
}

// cli is the state one invocation of shoalctl shares between commands.
type cli struct {
	env    env
	socket string
	host   string
	tlsDir string

	client api.ControlClient
	closer io.Closer
	dialed targets // where client talks to
}

func newRootCommand(e env) *cobra.Command {
	c := &cli{env: e}
	root := &cobra.Command{
		Use:   "shoalctl",
		Short: "Control a shoal cluster",
		Long: `shoalctl controls a shoal cluster through the Control API of a manager's
shoald. By default it talks to the local daemon over its unix socket, which
only root may open.

With --host ADDR (or $SHOAL_HOST) it talks to the manager at ADDR over TCP
with mutual TLS instead, presenting the admin certificate that ` + "`shoald init`" + `
wrote to <data-dir>/admin (ca.pem, cert.pem, key.pem); --tls-dir says
where a copy of that directory is. --socket is then ignored.

--host takes several managers of one cluster, separated by commas. They
are tried in order until one answers: a call moves on to the next manager
when it could not reach one, and a read also when the connection broke or
the manager had no leader. A write whose connection broke is reported, not
retried: it may have been done. The manager that answered is remembered
(in the user's cache directory) and asked first by the next command.
While a lab is up, plain shoalctl tries the lab's managers the same way.`,
		Example: `  shoalctl node ls
  shoalctl --host 192.0.2.10 --tls-dir ~/shoal-admin service ls
  shoalctl --host 192.0.2.10,192.0.2.11,192.0.2.12 node ls
  SHOAL_HOST=192.0.2.10:4242 shoalctl cluster join-token worker`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Version and completion are not wired yet; keep the tree to what works.
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", defaultSocket,
		"path of shoald's unix socket (env "+socketEnv+")")
	root.PersistentFlags().StringVarP(&c.host, "host", "H", "",
		"managers to reach over TCP with mutual TLS, HOST[:PORT][,HOST[:PORT]...], tried in order (default port "+defaultPort+"; env "+hostEnv+")")
	root.PersistentFlags().StringVar(&c.tlsDir, "tls-dir", defaultTLSDir,
		"directory with the admin credentials ca.pem, cert.pem and key.pem for --host (env "+tlsDirEnv+")")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{cmd: cmd, err: err}
	})
	root.AddCommand(newServiceCommand(c), newNodeCommand(c))
	root.AddCommand(newClusterCommand(c), newImageCommand(c), newNetworkCommand(c))
	root.AddCommand(newLabCommand(c))
	return root
}

// targets resolves where shoald is. Hosts (--host, else $SHOAL_HOST) win
// and take their credentials from --tls-dir, else $SHOAL_TLS_DIR, else
// the default; without them it is --socket, else $SHOAL_SOCKET, else the
// lab's managers while a lab is up, else the default socket.
func (c *cli) targets(cmd *cobra.Command) (targets, error) {
	if hosts := c.setting(cmd, "host", c.host, hostEnv); hosts != "" {
		source := "--host"
		if !cmd.Flags().Changed("host") {
			source = "$" + hostEnv
		}
		addrs, err := hostAddrs(source, hosts)
		if err != nil {
			return nil, err
		}
		tlsDir := c.setting(cmd, "tls-dir", c.tlsDir, tlsDirEnv)
		ts := make(targets, len(addrs))
		for i, addr := range addrs {
			ts[i] = target{host: addr, tlsDir: tlsDir}
		}
		return ts, nil
	}
	var ts targets
	for _, s := range c.orLab(cmd, c.setting(cmd, "socket", c.socket, socketEnv)) {
		ts = append(ts, target{socket: s})
	}
	return ts, nil
}

// setting is a flag's value when the flag was given, else the environment
// variable's when set, else the flag's default.
func (c *cli) setting(cmd *cobra.Command, flag, value, envKey string) string {
	if cmd.Flags().Changed(flag) {
		return value
	}
	if v := c.env.getenv(envKey); v != "" {
		return v
	}
	return value
}

// control returns the client, connecting on first use.
func (c *cli) control(cmd *cobra.Command) (api.ControlClient, error) {
	if c.client != nil {
		return c.client, nil
	}
	ts, err := c.targets(cmd)
	if err != nil {
		return nil, usageError{cmd: cmd, err: err}
	}
	client, closer, err := c.env.connect(cmd.Context(), ts)
	if err != nil {
		return nil, err
	}
	c.client, c.closer, c.dialed = client, closer, ts
	return client, nil
}

// run adapts a command body so that the connection it may have opened is
// closed when it returns.
func (c *cli) run(body func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := body(cmd, args)
		if c.closer != nil {
			if cerr := c.closer.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("close connection to shoald: %w", cerr)
			}
			c.client, c.closer = nil, nil
		}
		return err
	}
}

// groupCommand is a command that only holds subcommands: bare, it prints
// its help; with an argument it names the unknown subcommand.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{cmd: cmd, err: fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath())}
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(subs...)
	return cmd
}

// minArgs is cobra.MinimumNArgs with a message that says what is missing.
func minArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return usageError{cmd: cmd, err: fmt.Errorf("%q requires %s", cmd.CommandPath(), what)}
		}
		return nil
	}
}

// noArgs is cobra.NoArgs pointing at the help.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{cmd: cmd, err: fmt.Errorf("%q takes no arguments, got %q", cmd.CommandPath(), args[0])}
	}
	return nil
}

// usageError is a mistake in how a command was typed; the message points
// to the command's help.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e usageError) Error() string {
	return fmt.Sprintf("%v\nSee '%s --help'.", e.err, e.cmd.CommandPath())
}

func (e usageError) Unwrap() error { return e.err }
