package ctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newNetworkCommand(c *cli) *cobra.Command {
	return groupCommand("network", "Manage overlay networks",
		newNetworkCreateCommand(c), newNetworkLsCommand(c),
		newNetworkInspectCommand(c), newNetworkRmCommand(c))
}

// networkCreateFlags are what `network create` is told besides the name.
type networkCreateFlags struct {
	subnet, gateway string
	labels          []string
	opts            []string
}

// networkOpts are the keys `network create --opt` takes, as docker's
// `network create --opt`: each sets a field of the spec from its value,
// "" when the option has none (--opt encrypted).
// A setter's error is worded to follow the option as given ("encrypted=x").
var networkOpts = map[string]func(spec *api.NetworkSpec, value string, hasValue bool) error{
	"encrypted": func(spec *api.NetworkSpec, value string, hasValue bool) error {
		switch {
		case !hasValue || value == "true":
			spec.Encrypted = true
		case value == "false":
			spec.Encrypted = false
		default:
			return errors.New("want encrypted, encrypted=true or encrypted=false")
		}
		return nil
	},
}

// applyNetworkOpts sets what the --opt KEY[=VALUE] arguments ask for on
// spec. An unknown key, a bad value or a key given twice is an error that
// names it.
func applyNetworkOpts(spec *api.NetworkSpec, opts []string) error {
	seen := map[string]bool{}
	for _, o := range opts {
		key, value, hasValue := strings.Cut(o, "=")
		set, ok := networkOpts[key]
		if !ok {
			if key == "" {
				return fmt.Errorf("invalid --opt %q: want KEY[=VALUE]; options are %s", o, strings.Join(slices.Sorted(maps.Keys(networkOpts)), ", "))
			}
			return fmt.Errorf("unknown --opt %q: options are %s", key, strings.Join(slices.Sorted(maps.Keys(networkOpts)), ", "))
		}
		if seen[key] {
			return fmt.Errorf("--opt %s given twice: give each option once", key)
		}
		seen[key] = true
		if err := set(spec, value, hasValue); err != nil {
			return fmt.Errorf("invalid --opt %q: %w", o, err)
		}
	}
	return nil
}

// spec checks the flags and builds the spec. Subnet and gateway are parsed
// here too so that a typo is reported without a round trip; the managers
// check them again, with overlaps.
func (f networkCreateFlags) spec(name string) (*api.NetworkSpec, error) {
	if !serviceNameRE.MatchString(name) {
		return nil, fmt.Errorf("invalid network name %q: use at most 63 lower-case letters, digits and '-', starting with a letter", name)
	}
	if f.subnet != "" {
		if _, err := netip.ParsePrefix(f.subnet); err != nil {
			return nil, fmt.Errorf("invalid --subnet %q: want a CIDR such as 10.20.0.0/24", f.subnet)
		}
	}
	if f.gateway != "" {
		if _, err := netip.ParseAddr(f.gateway); err != nil {
			return nil, fmt.Errorf("invalid --gateway %q: want an IP address", f.gateway)
		}
		if f.subnet == "" {
			return nil, errors.New("--gateway needs --subnet: the gateway must be inside a subnet you choose")
		}
	}
	labels, err := parseLabels("--label", f.labels)
	if err != nil {
		return nil, err
	}
	spec := &api.NetworkSpec{Name: name, Subnet: f.subnet, Gateway: f.gateway, Labels: labels}
	if err := applyNetworkOpts(spec, f.opts); err != nil {
		return nil, err
	}
	return spec, nil
}

func newNetworkCreateCommand(c *cli) *cobra.Command {
	var f networkCreateFlags
	cmd := &cobra.Command{
		Use:   "create [flags] NAME",
		Short: "Create an overlay network",
		Long: `Create an overlay network. Without --subnet the managers pick the next free
subnet from the cluster's pool; subnets of two networks never overlap. The
gateway is the subnet's first address unless --gateway says otherwise.
Prints the new network's ID.

--opt KEY[=VALUE] sets a network option (repeatable):
  encrypted   send the network's traffic between nodes through WireGuard
              (encrypted, encrypted=true or encrypted=false). The network's
              tasks run only on nodes whose kernel has WireGuard; without
              such a node they stay pending, and service ps says why.
              Fixed at creation; not for the ingress network.`,
		Example: `  shoalctl network create --subnet 10.20.0.0/24 backend
  shoalctl network create --opt encrypted secrets`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError{cmd: cmd, err: fmt.Errorf("%q requires exactly one NAME argument, got %d", cmd.CommandPath(), len(args))}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&f.subnet, "subnet", "", "subnet in CIDR form (default: the next free one from the pool)")
	fs.StringVar(&f.gateway, "gateway", "", "gateway address inside --subnet (default: its first address)")
	fs.StringArrayVar(&f.labels, "label", nil, "network label KEY=VALUE (repeatable)")
	fs.StringArrayVarP(&f.opts, "opt", "o", nil, "network option KEY[=VALUE] (repeatable): encrypted")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		spec, err := f.spec(args[0])
		if err != nil {
			return usageError{cmd: cmd, err: err}
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		resp, err := client.CreateNetwork(cmd.Context(), &api.CreateNetworkRequest{Spec: spec})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetNetwork().GetId())
		return err
	})
	return cmd
}

// networkRow is a line of `network ls`, and what its --format templates see.
type networkRow struct {
	ID, Name, Subnet, Gateway string
	VNI                       uint32
	Ingress, Encrypted        bool
}

func newNetworkLsCommand(c *cli) *cobra.Command {
	return listCommand(c, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List overlay networks",
		Long: `List the overlay networks, sorted by name, with their allocated subnet,
gateway and VXLAN id, and whether they are encrypted (--opt encrypted).

--format TEMPLATE runs a Go template per network with the fields
.ID .Name .Subnet .Gateway .VNI .Ingress .Encrypted
and the functions json, join, lower and upper.`,
		Args: noArgs,
	}, func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[networkRow], error) {
		resp, err := client.ListNetworks(ctx, &api.ListNetworksRequest{})
		if err != nil {
			return listing[networkRow]{}, err
		}
		return networkListing(p, resp.GetNetworks()), nil
	})
}

func networkListing(p *listPrinter, nets []*api.Network) listing[networkRow] {
	nets = slices.Clone(nets)
	slices.SortFunc(nets, func(a, b *api.Network) int {
		if c := strings.Compare(a.GetSpec().GetName(), b.GetSpec().GetName()); c != 0 {
			return c
		}
		return strings.Compare(a.GetId(), b.GetId())
	})
	l := listing[networkRow]{
		columns: []column[networkRow]{
			{"ID", func(r networkRow) string { return r.ID }},
			{"NAME", func(r networkRow) string { return r.Name }},
			{"SUBNET", func(r networkRow) string { return r.Subnet }},
			{"GATEWAY", func(r networkRow) string { return r.Gateway }},
			{"VNI", func(r networkRow) string { return strconv.FormatUint(uint64(r.VNI), 10) }},
			{"ENCRYPTED", func(r networkRow) string {
				if r.Encrypted {
					return "yes"
				}
				return "no"
			}},
		},
		id: func(r networkRow) string { return r.ID },
	}
	for _, n := range nets {
		l.rows = append(l.rows, networkRow{
			ID:        p.shortID(n.GetId()),
			Name:      n.GetSpec().GetName(),
			Subnet:    n.GetSubnet(),
			Gateway:   n.GetGateway(),
			VNI:       n.GetVni(),
			Ingress:   n.GetIngress(),
			Encrypted: n.GetSpec().GetEncrypted(),
		})
		l.objects = append(l.objects, n)
	}
	return l
}

func newNetworkInspectCommand(c *cli) *cobra.Command {
	return inspectCommand(c, &cobra.Command{
		Use:   "inspect [flags] NETWORK...",
		Short: "Show overlay networks in detail",
		Long: `Show networks (by name, ID or unique ID prefix) as a JSON array.

--format TEMPLATE runs a Go template per network over the api.Network type,
so fields are named as in Go: {{.Id}}, {{.Spec.Name}}, {{.Subnet}},
{{.Gateway}}, {{.Vni}}, {{.Spec.Encrypted}}, {{json .Spec.Labels}}.`,
		Example: `  shoalctl network inspect --format '{{.Subnet}}' backend`,
		Args:    minArgs(1, "at least one NETWORK argument"),
	}, "network", func(ctx context.Context, client api.ControlClient, name string) (*api.Network, error) {
		resp, err := client.GetNetwork(ctx, &api.GetNetworkRequest{Network: name})
		return resp.GetNetwork(), err
	})
}

func newNetworkRmCommand(c *cli) *cobra.Command {
	return rmCommand(c, &cobra.Command{
		Use:     "rm NETWORK...",
		Aliases: []string{"remove"},
		Short:   "Remove overlay networks",
		Long: `Remove networks (by name, ID or unique ID prefix). Each removed network's
argument is printed. Every argument is tried; the command fails if any
could not be removed.`,
		Args: minArgs(1, "at least one NETWORK argument"),
	}, func(ctx context.Context, client api.ControlClient, name string) error {
		_, err := client.RemoveNetwork(ctx, &api.RemoveNetworkRequest{Network: name})
		return err
	})
}
