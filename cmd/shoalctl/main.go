// Command shoalctl is the shoal CLI; its commands live in package ctl.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"github.com/shoal-project/shoal/ctl"
)

func main() {
	// Ctrl-C stops a wait for convergence; the cluster carries on.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := ctl.NewRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", ctl.ErrorMessage(err))
		os.Exit(1)
	}
}
