package ctl

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func newImageCommand(c *cli) *cobra.Command {
	return groupCommand("image", "Manage images loaded into the cluster",
		newImageLoadCommand(c),
		newImageLsCommand(c),
	)
}

// loadChunkSize is how much of a tarball one LoadImage message carries:
// well under gRPC's default 4 MiB message limit, and large enough that
// per-message overhead is lost in the copy.
const loadChunkSize = 1 << 20

// stdinName is the FILE argument that means standard input.
const stdinName = "-"

// imageSource is the tarball `image load` sends: its first chunk is read
// before any RPC, so that a missing, unreadable or empty file is reported
// without a server.
type imageSource struct {
	name  string // as messages name it
	r     io.Reader
	first []byte
	close func() error
}

func openImageSource(path string, stdin io.Reader) (*imageSource, error) {
	src := &imageSource{name: path, r: stdin, close: func() error { return nil }}
	if path == stdinName {
		src.name = "standard input"
	} else {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("cannot open image tarball: %w", err)
		}
		src.r, src.close = f, f.Close
	}
	buf := make([]byte, loadChunkSize)
	n, err := io.ReadFull(src.r, buf)
	switch {
	case n == 0 && (err == nil || errors.Is(err, io.EOF)):
		src.close()
		return nil, fmt.Errorf("%s is empty: want an OCI or Docker image tarball (as `docker save` writes)", src.name)
	case err != nil && !errors.Is(err, io.ErrUnexpectedEOF):
		src.close()
		return nil, fmt.Errorf("read image tarball %s: %w", src.name, err)
	}
	src.first = buf[:n]
	return src, nil
}

// sendImage streams the tarball in order and returns the image as the
// managers stored it.
func sendImage(ctx context.Context, client api.ControlClient, src *imageSource) (*api.Image, error) {
	// A read error must abort the stream, never half-close it: a
	// half-close tells the managers the tarball is complete.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.LoadImage(ctx)
	if err != nil {
		return nil, err
	}
	// gRPC marshals a message within Send, so the buffer is free for the
	// next chunk when Send returns.
	chunk := src.first
	buf := src.first[:cap(src.first)]
	for len(chunk) > 0 {
		if err := stream.Send(&api.LoadImageRequest{Data: chunk}); err != nil {
			if errors.Is(err, io.EOF) {
				// The server ended the stream; its status says why.
				_, err = stream.CloseAndRecv()
			}
			return nil, err
		}
		n, err := io.ReadFull(src.r, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read image tarball %s: %w", src.name, err)
		}
		chunk = buf[:n]
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return resp.GetImage(), nil
}

func newImageLoadCommand(c *cli) *cobra.Command {
	var input string
	cmd := &cobra.Command{
		Use:   "load [flags] FILE|-",
		Short: "Load an image tarball into the cluster",
		Long: `Send an image tarball (OCI layout or ` + "`docker save`" + ` archive) to the managers, which
keep it and import it into containerd on every ready node, and on nodes
that join later. Services can then use the image's names without a
registry. Prints the names the tarball holds and its digest.

FILE - (or -i -) reads the tarball from standard input.`,
		Example: `  shoalctl image load web.tar
  shoalctl image load -i web.tar
  docker save web:1.0 | shoalctl image load -`,
		Args: cobra.MaximumNArgs(1),
	}
	cmd.Flags().StringVarP(&input, "input", "i", "", "read the tarball from this file instead of the FILE argument")
	cmd.RunE = c.run(func(cmd *cobra.Command, args []string) error {
		var path string
		switch {
		case len(args) == 1 && cmd.Flags().Changed("input"):
			return usageError{cmd: cmd, err: errors.New("give the tarball as FILE or as --input, not both")}
		case len(args) == 1:
			path = args[0]
		case cmd.Flags().Changed("input"):
			path = input
		}
		if path == "" {
			return usageError{cmd: cmd, err: fmt.Errorf("%q requires a FILE argument (- for standard input)", cmd.CommandPath())}
		}
		src, err := openImageSource(path, cmd.InOrStdin())
		if err != nil {
			return err
		}
		defer src.close()
		client, err := c.control(cmd)
		if err != nil {
			return err
		}
		img, err := sendImage(cmd.Context(), client, src)
		if err != nil {
			return err
		}
		var b strings.Builder
		for _, name := range img.GetNames() {
			fmt.Fprintf(&b, "Loaded image: %s\n", name)
		}
		fmt.Fprintf(&b, "Digest: %s\n", img.GetId())
		_, err = io.WriteString(cmd.OutOrStdout(), b.String())
		return err
	})
	return cmd
}

// imageRow is a line of `image ls`, and what its --format templates see.
type imageRow struct {
	ID      string
	Names   string // comma-separated
	Size    string // human
	Holders int    // managers that keep the tarball
}

func newImageLsCommand(c *cli) *cobra.Command {
	return listCommand(c, &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List images loaded into the cluster",
		Long: `List the images loaded with ` + "`image load`" + `, sorted by name. HOLDERS is how
many managers keep the tarball, to give it to nodes that join later.

--format TEMPLATE runs a Go template per image with the fields
.ID .Names .Size .Holders
and the functions json, join, lower and upper.`,
		Args: noArgs,
	}, func(ctx context.Context, client api.ControlClient, p *listPrinter) (listing[imageRow], error) {
		resp, err := client.ListImages(ctx, &api.ListImagesRequest{})
		if err != nil {
			return listing[imageRow]{}, err
		}
		return imageListing(p, resp.GetImages()), nil
	})
}

func imageListing(p *listPrinter, images []*api.Image) listing[imageRow] {
	images = slices.Clone(images)
	// Nameless images last: they are the ones nobody can refer to.
	slices.SortFunc(images, func(a, b *api.Image) int {
		an, bn := a.GetNames(), b.GetNames()
		switch {
		case len(an) == 0 && len(bn) > 0:
			return 1
		case len(an) > 0 && len(bn) == 0:
			return -1
		case len(an) > 0:
			if c := strings.Compare(an[0], bn[0]); c != 0 {
				return c
			}
		}
		return strings.Compare(a.GetId(), b.GetId())
	})
	l := listing[imageRow]{
		columns: []column[imageRow]{
			{"ID", func(r imageRow) string { return r.ID }},
			{"NAMES", func(r imageRow) string { return cmp.Or(r.Names, "<none>") }},
			{"SIZE", func(r imageRow) string { return r.Size }},
			{"HOLDERS", func(r imageRow) string { return strconv.Itoa(r.Holders) }},
		},
		id: func(r imageRow) string { return r.ID },
	}
	for _, i := range images {
		id := i.GetId()
		if !p.flags.noTrunc {
			// As Docker shows image IDs: hex digits only.
			id = p.shortID(strings.TrimPrefix(id, "sha256:"))
		}
		l.rows = append(l.rows, imageRow{
			ID:      id,
			Names:   strings.Join(i.GetNames(), ", "),
			Size:    humanSize(i.GetSize()),
			Holders: len(i.GetHolders()),
		})
		l.objects = append(l.objects, i)
	}
	return l
}

// humanSize is a byte count in decimal units with three significant
// digits, as Docker's image tables show it ("7.81MB").
func humanSize(n int64) string {
	units := []string{"B", "kB", "MB", "GB", "TB", "PB", "EB"}
	f := float64(n)
	i := 0
	// 999.5 and up would print as "1e+03" at three digits.
	for f >= 999.5 && i < len(units)-1 {
		f /= 1000
		i++
	}
	return strconv.FormatFloat(f, 'g', 3, 64) + units[i]
}
