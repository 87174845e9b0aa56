package ctl

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"github.com/vishvananda/netns"

	"github.com/shoal-project/shoal/lab"
)

// labSockets is the lab's context: the sockets of the lab's managers,
// which plain shoalctl tries in turn while a lab is up; none when none is.
// It comes after --socket and $SHOAL_SOCKET and before the default.
func labSockets() []string {
	s, err := lab.ContextSockets()
	if err != nil {
		return nil
	}
	return s
}

func newLabCommand(c *cli) *cobra.Command {
	var verbose bool
	logger := func(w io.Writer) *slog.Logger {
		level := slog.LevelWarn
		if verbose {
			level = slog.LevelInfo
		}
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	}
	cmd := groupCommand("lab", "Run a local multi-node cluster on this machine",
		newLabUpCommand(c, logger),
		newLabAddCommand(c, logger),
		newLabDownCommand(c, logger),
		newLabStatusCommand(c, logger),
		newLabExecCommand(c),
	)
	cmd.Long = `A lab is a shoal cluster on this one Linux machine, for trying shoal out and
for tests. Every node is a network namespace (shoal-lab-NODE) on the bridge
` + lab.BridgeName + ` with its own address, data dir (` + lab.DataRoot + `/NODE),
socket, containerd namespace and shoald; all nodes share the host's
containerd. While a lab is up, plain shoalctl commands talk to it: to
manager1, or the next manager that answers when it does not.

Every lab command needs root.`
	cmd.Example = `  shoalctl lab up --managers 3 --workers 2
  shoalctl node ls
  shoalctl lab add --workers 1
  shoalctl lab exec worker1 -- ip -o addr
  shoalctl lab status
  shoalctl lab down`
	cmd.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log every step")
	return cmd
}

func newLabUpCommand(c *cli, logger func(io.Writer) *slog.Logger) *cobra.Command {
	var (
		cfg        lab.Config
		subnet     string
		shoald     string
		shoaldArgs []string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a local multi-node cluster",
		Long: `Start a lab: manager1 creates the cluster (shoald init), the other managers
and the workers join it with the join tokens, and the command returns once
every node is Ready. If anything fails, everything made so far is removed.

shoald is the one next to this shoalctl, else the one on $PATH, unless
--shoald says otherwise.`,
		Args: noArgs,
	}
	flags := cmd.Flags()
	flags.IntVar(&cfg.Managers, "managers", 1, "number of managers (at least 1)")
	flags.IntVar(&cfg.Workers, "workers", 0, "number of workers")
	flags.StringVar(&subnet, "subnet", lab.DefaultSubnet, "IPv4 underlay; the bridge takes its first address, the nodes the next ones")
	flags.StringArrayVar(&cfg.Images, "image", nil, "image tarball (OCI or Docker archive) to import on every node (repeatable)")
	flags.StringVar(&shoald, "shoald", "", "path of the shoald binary")
	flags.StringArrayVar(&shoaldArgs, "shoald-arg", nil, "extra flag for every shoald, e.g. --shoald-arg=--log-level=debug (repeatable)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		p, err := netip.ParsePrefix(subnet)
		if err != nil {
			return usageError{cmd: cmd, err: fmt.Errorf("--subnet %q: want an IPv4 prefix like %s", subnet, lab.DefaultSubnet)}
		}
		cfg.Subnet = p
		cfg.ShoaldArgs = shoaldArgs
		if _, _, err := lab.Plan(cfg); err != nil {
			return usageError{cmd: cmd, err: err}
		}
		if cfg.Shoald, err = lab.FindShoald(shoald); err != nil {
			return err
		}
		cfg.Progress = cmd.ErrOrStderr()
		cfg.Logger = logger(cmd.ErrOrStderr())
		l, err := lab.Up(cmd.Context(), cfg)
		if err != nil {
			return err
		}
		return printLabUsage(cmd.OutOrStdout(), l)
	}
	return cmd
}

// printLabUsage tells the user what they have and how to use it.
func printLabUsage(w io.Writer, l *lab.Lab) error {
	nodes := l.Nodes()
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "\nThe lab is up: %s on %s (%s, bridge address %s).\n\n", countNodes(nodes), lab.BridgeName, l.Subnet(), l.Gateway())
	writeNodeTable(&buf, nodes)
	fmt.Fprintf(&buf, `
shoalctl now talks to the lab (%s's socket %s, or the next manager's):
  shoalctl node ls
Add nodes:
  shoalctl lab add --workers 1
Run a command inside a node's network namespace:
  shoalctl lab exec %s -- ip -o addr
See the nodes:
  shoalctl lab status
Remove the lab and everything it made:
  shoalctl lab down
`, nodes[0].Name, l.Socket(), nodes[len(nodes)-1].Name)
	return writeTrimmed(w, buf.String())
}

// printLabNodes prints a heading and the nodes' table.
func printLabNodes(w io.Writer, heading string, nodes []lab.Node) error {
	var buf bytes.Buffer
	buf.WriteString(heading)
	writeNodeTable(&buf, nodes)
	return writeTrimmed(w, buf.String())
}

// writeNodeTable lists nodes with where to find them.
func writeNodeTable(buf *bytes.Buffer, nodes []lab.Node) {
	tw := tabwriter.NewWriter(buf, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tADDRESS\tNETWORK NAMESPACE\tLOG")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Name, n.Role, n.Addr, n.Namespace, n.LogFile())
	}
	tw.Flush()
}

func countNodes(nodes []lab.Node) string {
	var m, w int
	for _, n := range nodes {
		if n.Role == lab.RoleManager {
			m++
		} else {
			w++
		}
	}
	plural := func(n int, word string) string {
		if n == 1 {
			return "1 " + word
		}
		return strconv.Itoa(n) + " " + word + "s"
	}
	return plural(m, "manager") + " and " + plural(w, "worker")
}

func newLabAddCommand(c *cli, logger func(io.Writer) *slog.Logger) *cobra.Command {
	var cfg lab.AddConfig
	cmd := &cobra.Command{
		Use:   "add",
		Short: "Add nodes to the lab",
		Long: `Add nodes to the lab that is up: each gets its namespace on the lab's bridge,
the next address and the next name of its role (worker3 after worker2),
and joins the cluster through a manager that answers, with the join token
of its role. The command returns once the new nodes are Ready. They get the
images the lab was made with, and those of --image.

If a node fails to join, it stays in the lab as it is, for ` + "`lab status`" + ` and
its log; ` + "`lab down`" + ` removes it with the rest.`,
		Example: `  shoalctl lab add --workers 1
  shoalctl lab add --managers 2 --image web.tar`,
		Args: noArgs,
	}
	flags := cmd.Flags()
	flags.IntVar(&cfg.Managers, "managers", 0, "number of managers to add")
	flags.IntVar(&cfg.Workers, "workers", 0, "number of workers to add")
	flags.StringArrayVar(&cfg.Images, "image", nil, "image tarball (OCI or Docker archive) to import on the new nodes (repeatable)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if cfg.Managers < 0 || cfg.Workers < 0 || cfg.Managers == 0 && cfg.Workers == 0 {
			return usageError{cmd: cmd, err: errors.New("say how many nodes to add, with --managers N or --workers N (not negative)")}
		}
		l, err := lab.Load()
		if err != nil {
			return err
		}
		cfg.Progress = cmd.ErrOrStderr()
		cfg.Logger = logger(cmd.ErrOrStderr())
		nodes, err := l.Add(cmd.Context(), cfg)
		if err != nil {
			return err
		}
		return printLabNodes(cmd.OutOrStdout(), "\nAdded "+countNodes(nodes)+".\n\n", nodes)
	}
	return cmd
}

func newLabDownCommand(c *cli, logger func(io.Writer) *slog.Logger) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab and everything it made",
		Long: `Remove the lab: its shoald processes, the containers, images and snapshots
of its containerd namespaces, its network namespaces, links and bridge,
its data dirs and the context that points shoalctl at it. It finds all of
it by name, so it also cleans up after a crash or a half-done ` + "`lab up`" + `.
Running it when no lab is up does nothing.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			address := lab.DefaultContainerd
			if l, err := lab.Load(); err == nil {
				address = l.ContainerdAddress()
			}
			if err := lab.Down(cmd.Context(), address, logger(cmd.ErrOrStderr())); err != nil {
				return fmt.Errorf("lab down: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "The lab is down.")
			return nil
		},
	}
}

func newLabStatusCommand(c *cli, logger func(io.Writer) *slog.Logger) *cobra.Command {
	var format string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "List the lab's nodes",
		Long: `List the lab's nodes: name, role, underlay address, network namespace,
shoald's pid, whether it runs, and the cluster's view of the node when a
manager answers. --format json prints a JSON array of objects with the
fields name, role, address, namespace, data_dir, socket, pid, running and
state.`,
		Args: noArgs,
	}
	cmd.Flags().StringVar(&format, "format", "table", `"table" or "json"`)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if format != "table" && format != "json" {
			return usageError{cmd: cmd, err: fmt.Errorf("--format %q: want table or json", format)}
		}
		l, err := lab.Load()
		if err != nil {
			return err
		}
		st := l.Status(cmd.Context())
		if format == "json" {
			b, err := json.MarshalIndent(st, "", "  ")
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
			return err
		}
		return printLabStatus(cmd.OutOrStdout(), st)
	}
	return cmd
}

func printLabStatus(w io.Writer, st []lab.NodeStatus) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 0, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tADDRESS\tNAMESPACE\tPID\tSHOALD\tSTATE")
	for _, n := range st {
		running := "stopped"
		if n.Running {
			running = "running"
		}
		state := n.State
		if state == "" {
			state = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", n.Name, n.Role, n.Addr, n.Namespace, n.PID, running, state)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return writeTrimmed(w, buf.String())
}

func newLabExecCommand(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "exec NODE -- COMMAND [ARG...]",
		Short: "Run a command inside a node's network namespace",
		Long: `Run a command inside a node's network namespace, as if on that host: it sees
the node's eth0 and address, and $SHOAL_SOCKET names the node's socket.
Input, output and the exit code are the command's own: shoalctl replaces
itself with it. Only the network namespace is the node's; the filesystem
is the host's.`,
		Example: `  shoalctl lab exec worker1 -- ip -o addr
  shoalctl lab exec manager2 -- ping -c1 10.213.0.2`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1:1], args[2:]...)
			}
			if len(args) < 2 {
				return usageError{cmd: cmd, err: fmt.Errorf("%q requires a node and a command", cmd.CommandPath())}
			}
			return nil
		},
	}
	// Everything after NODE is the command's, flags included.
	cmd.Flags().SetInterspersed(false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 1 && args[1] == "--" {
			args = append(args[:1:1], args[2:]...)
		}
		l, err := lab.Load()
		if err != nil {
			return err
		}
		node, err := l.Node(args[0])
		if err != nil {
			return err
		}
		path, err := exec.LookPath(args[1])
		if err != nil {
			return fmt.Errorf("lab exec: %w", err)
		}
		return execInNetns(node, path, args[1:])
	}
	return cmd
}

// execInNetns replaces shoalctl with argv inside the node's network
// namespace. execve from a thread that joined the namespace keeps it, so
// the command starts there with our stdio, and its exit code and signals
// are the user's directly.
func execInNetns(node lab.Node, path string, argv []string) error {
	if os.Geteuid() != 0 {
		return errors.New("lab exec needs root to enter a network namespace")
	}
	ns, err := netns.GetFromName(node.Namespace)
	if err != nil {
		return fmt.Errorf("open network namespace of %s: %w (is the lab up? see `shoalctl lab status`)", node.Name, err)
	}
	// The thread stays locked for good: if exec fails it is in the
	// node's namespace, and no other goroutine may run there.
	runtime.LockOSThread()
	if err := netns.Set(ns); err != nil {
		return fmt.Errorf("enter network namespace of %s: %w", node.Name, err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, socketEnv+"=") {
			env = append(env, kv)
		}
	}
	env = append(env, socketEnv+"="+node.Socket)
	if err := syscall.Exec(path, argv, env); err != nil {
		return fmt.Errorf("lab exec %s: %w", strings.Join(argv, " "), err)
	}
	return nil
}

// orLab is socket, or the lab's managers' sockets while a lab is up and
// neither --socket nor $SHOAL_SOCKET chose one.
func (c *cli) orLab(cmd *cobra.Command, socket string) []string {
	if cmd.Flags().Changed("socket") || c.env.getenv(socketEnv) != "" || c.env.labSockets == nil {
		return []string{socket}
	}
	if s := c.env.labSockets(); len(s) > 0 {
		return s
	}
	return []string{socket}
}
