package ctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// The verbs every kind of object has (ls, inspect, rm) behave the same for
// all kinds: a kind says how to fetch or remove one of its objects and how
// its rows look; how flags and arguments are checked, tried and reported
// is decided here. Each helper completes a command whose help (Use, Short,
// Long, Example, Args) the kind wrote.

// listCommand makes cmd a list command of rows R: the output flags, and a
// body that checks the --format template before any RPC, asks list for
// the listing and prints it.
func listCommand[R any](c *cli, cmd *cobra.Command, list func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[R], error)) *cobra.Command {
	var o outputFlags
	o.register(cmd.Flags())
	cmd.RunE = c.run(func(cmd *cobra.Command, _ []string) error {
		p, err := newListPrinter(o)
		if err != nil {
			return err
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		l, err := list(cmd.Context(), client, p)
		if err != nil {
			return err
		}
		return printList(cmd.OutOrStdout(), p, l)
	})
	return cmd
}

// inspectCommand makes cmd an inspect command for objects of type M, each
// named by an argument and fetched with get: --format, checked before any
// RPC, and a body that prints what was found (printObjects) and then fails
// naming every argument that was not.
func inspectCommand[M proto.Message](c *cli, cmd *cobra.Command, kind string, get func(ctx context.Context, client api.ControlClient, name string) (M, error)) *cobra.Command {
	var format string
	cmd.Flags().StringVarP(&format, "format", "f", "", "print as \"json\" (default) or a Go template run per "+kind)
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		if err := checkInspectFormat(format); err != nil {
			return err
		}
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		found, errs := getEach(args, func(name string) (M, error) { return get(cmd.Context(), client, name) })
		if err := printObjects(cmd.OutOrStdout(), format, found); err != nil {
			return err
		}
		return errs
	})
	return cmd
}

// checkInspectFormat reports a bad --format template of an inspect command
// before any RPC.
func checkInspectFormat(format string) error {
	if format == "" || format == "json" {
		return nil
	}
	_, err := parseTemplate(format)
	return err
}

// rmCommand makes cmd a remove command: every argument is tried with
// remove, each one removed is printed as given, and the command fails
// naming every argument that could not be removed.
func rmCommand(c *cli, cmd *cobra.Command, remove func(ctx context.Context, client api.ControlClient, name string) error) *cobra.Command {
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		return eachArg(args, func(name string) error {
			if err := remove(cmd.Context(), client, name); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), name)
			return nil
		})
	})
	return cmd
}

// eachArg calls do for every argument, in order. An argument that fails
// does not stop the others: the joined error names each that failed
// (argError).
func eachArg(args []string, do func(name string) error) error {
	var errs []error
	for _, name := range args {
		if err := do(name); err != nil {
			errs = append(errs, argError(name, err))
		}
	}
	return errors.Join(errs...)
}

// getEach fetches the object every argument names, in order: what was
// found, and an error naming every argument that was not (eachArg).
func getEach[T any](args []string, get func(name string) (T, error)) ([]T, error) {
	var found []T
	err := eachArg(args, func(name string) error {
		v, err := get(name)
		if err != nil {
			return err
		}
		found = append(found, v)
		return nil
	})
	return found, err
}

// rewrite is the read-modify-write of an object's spec that `node update`,
// `service update` and `service scale` share: read fetches the object and
// its spec as in effect, change edits a copy of the spec (or refuses with
// an error), and write stores it at the version read. A write that lost a
// race (Aborted: the object changed between the read and the write) is
// tried again on a fresh read, at most attempts times. It returns the
// object as stored and whether anything was written: an unchanged spec is
// not sent.
func rewrite[O any, S proto.Message](attempts int, read func() (O, S, error), change func(O, S) error, write func(O, S) (O, error)) (O, bool, error) {
	var (
		zero O
		err  error
	)
	for range attempts {
		obj, was, rerr := read()
		if rerr != nil {
			return zero, false, rerr
		}
		spec := proto.CloneOf(was)
		if err := change(obj, spec); err != nil {
			return zero, false, err
		}
		if proto.Equal(spec, was) {
			return obj, false, nil
		}
		var stored O
		stored, err = write(obj, spec)
		if status.Code(err) == codes.Aborted {
			continue
		}
		if err != nil {
			return zero, false, err
		}
		return stored, true, nil
	}
	return zero, false, err
}
