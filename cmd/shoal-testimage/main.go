// Command shoal-testimage builds the echo test image as an OCI tarball and
// loads image tarballs into containerd, for `make demo` and for trying
// shoal on a machine without a registry:
//
//	shoal-testimage build -o echo.tar [--ref shoal.test/echo:latest]
//	shoal-testimage import [--address SOCK] [--namespace shoal] echo.tar
//	shoal-testimage get URL
//	shoal-testimage load [-n 200] [-c 4] URL|udp://HOST:PORT   (JSON report)
//	shoal-testimage stream [-bytes N] HOST:PORT                (JSON report)
//	shoal-testimage purge NAMESPACE   (removes everything in it, and it)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/internal/testimage"
)

const usage = `usage:
  shoal-testimage build -o FILE [--ref REF]
  shoal-testimage import [--address SOCK] [--namespace NS] FILE
  shoal-testimage get URL
  shoal-testimage load [-n N] [-c C] [-timeout D] URL|udp://HOST:PORT
  shoal-testimage stream [-bytes N] HOST:PORT
  shoal-testimage purge [--address SOCK] NAMESPACE`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "shoal-testimage:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "build":
		fs := flag.NewFlagSet("build", flag.ContinueOnError)
		out := fs.String("o", "", "write the image tarball to this file")
		ref := fs.String("ref", testimage.EchoRef, "image reference to name the image")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *out == "" || fs.NArg() != 0 {
			return errors.New(usage)
		}
		if err := testimage.BuildEcho(ctx, *out, *ref); err != nil {
			return err
		}
		fmt.Printf("wrote %s (%s)\n", *out, *ref)
		return nil
	case "import":
		fs := flag.NewFlagSet("import", flag.ContinueOnError)
		address := fs.String("address", "/run/containerd/containerd.sock", "containerd socket")
		namespace := fs.String("namespace", "shoal", "containerd namespace (shoald's --containerd-namespace)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New(usage)
		}
		f, err := os.Open(fs.Arg(0))
		if err != nil {
			return err
		}
		defer f.Close()
		names, err := image.ImportTo(ctx, *address, *namespace, f)
		if err != nil {
			return err
		}
		for _, n := range names {
			fmt.Printf("imported %s into namespace %s\n", n, *namespace)
		}
		return nil
	case "purge":
		fs := flag.NewFlagSet("purge", flag.ContinueOnError)
		address := fs.String("address", "/run/containerd/containerd.sock", "containerd socket")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New(usage)
		}
		return image.PurgeNamespace(ctx, *address, fs.Arg(0))
	case "get":
		// The demo runs this under nsenter to reach a task on its own
		// loopback; hosts may have no curl.
		if len(args) != 2 {
			return errors.New(usage)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[1], nil)
		if err != nil {
			return err
		}
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", args[1], resp.Status)
		}
		return nil
	case "load":
		// Many short requests, each on a new connection, counted by the
		// task that answered: tests and benchmarks of the routing mesh
		// run it inside a client network namespace.
		fs := flag.NewFlagSet("load", flag.ContinueOnError)
		n := fs.Int("n", 200, "requests in all")
		c := fs.Int("c", 4, "requests at once")
		timeout := fs.Duration("timeout", 5*time.Second, "bound on one request")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New(usage)
		}
		rep, err := testimage.Load(ctx, testimage.LoadConfig{Target: fs.Arg(0), Requests: *n, Concurrency: *c, Timeout: *timeout})
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(rep)
	case "stream":
		fs := flag.NewFlagSet("stream", flag.ContinueOnError)
		size := fs.Int64("bytes", 64<<20, "bytes to send and read back")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return errors.New(usage)
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		d, err := testimage.Stream(sctx, fs.Arg(0), *size)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]any{"bytes": *size, "elapsed": d})
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}
