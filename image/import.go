package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/pkg/namespaces"
)

const (
	// dialTimeout bounds connecting to containerd: the socket is local, so
	// a longer wait means containerd is not running.
	dialTimeout = 10 * time.Second
	// leaseExpiry is a backstop: the lease is deleted when Import returns,
	// and expires by itself only if the process dies mid-import.
	leaseExpiry = time.Hour
	// leaseDeleteTimeout bounds releasing the lease, which may wait for a
	// garbage collection pass.
	leaseDeleteTimeout = time.Minute
)

// ErrNoneNamed is wrapped by Import's error when the import failed before
// any image was named: every name still refers to what it did before.
var ErrNoneNamed = errors.New("no image was named")

// Import loads an OCI or Docker image tarball into the containerd
// namespace of ctx and unpacks each image into snapshotter (the
// namespace's default when empty), so a container can be created from it
// right away. It returns the names of the images it created or moved. A
// failed import leaves no content behind.
//
// r is read to its end before containerd sees a byte: a reader that
// judges the stream only at its end (one checking the tarball's digest,
// as the worker's does) fails the import before any image is named, so a
// tarball that is not the one expected never takes a name, not even for a
// moment, and never moves a name off the image it named before. The
// tarball is spooled to an unlinked file in the temporary directory for
// that (an image's size, for the length of the import).
func Import(ctx context.Context, c *client.Client, snapshotter string, r io.Reader) (names []string, err error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, fmt.Errorf("import image: %w", err)
	}
	spool, err := spoolTarball(r)
	if err != nil {
		return nil, fmt.Errorf("import image into namespace %s: %w (%w)", ns, err, ErrNoneNamed)
	}
	defer spool.Close()
	// One lease over import and unpack keeps the blobs until an image
	// references them. On failure it is deleted synchronously, so garbage
	// collection removes what was written before the caller moves on (a
	// test deleting its namespace would otherwise find blobs in it).
	lm := c.LeasesService()
	lease, err := lm.Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiry))
	if err != nil {
		return nil, fmt.Errorf("create lease for image import in namespace %s: %w", ns, err)
	}
	defer func() {
		delCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseDeleteTimeout)
		defer cancel()
		var opts []leases.DeleteOpt
		if err != nil {
			opts = append(opts, leases.SynchronousDelete)
		}
		if derr := lm.Delete(delCtx, lease, opts...); derr != nil && err == nil {
			err = fmt.Errorf("release import lease %s: %w", lease.ID, derr)
		}
	}()
	ctx = leases.WithLease(ctx, lease.ID)

	imgs, err := c.Import(ctx, spool, client.WithImageRefTranslator(RefName))
	if err != nil {
		return nil, fmt.Errorf("import image tarball into namespace %s: %w", ns, err)
	}
	if len(imgs) == 0 {
		return nil, errors.New("import image tarball: it names no image (no io.containerd.image.name or full org.opencontainers.image.ref.name annotation, no docker RepoTags)")
	}
	for _, img := range imgs {
		if err := client.NewImage(c, img).Unpack(ctx, snapshotter); err != nil {
			return names, fmt.Errorf("unpack image %s: %w", img.Name, err)
		}
		names = append(names, img.Name)
	}
	return names, nil
}

// spoolTarball copies r to its end into an unlinked temporary file and
// returns that file, rewound. An error reading r (a digest check at its
// end, a broken stream) is returned before anything reaches containerd.
func spoolTarball(r io.Reader) (*os.File, error) {
	f, err := os.CreateTemp("", "shoal-import-*.tar")
	if err != nil {
		return nil, fmt.Errorf("spool image tarball: %w", err)
	}
	// Unlinked at once: the file goes with the process, whatever happens.
	os.Remove(f.Name())
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return nil, fmt.Errorf("read image tarball: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		f.Close()
		return nil, fmt.Errorf("spool image tarball: %w", err)
	}
	return f, nil
}

// ImportTo loads an OCI or Docker image tarball into containerd (address is
// the socket path) in namespace, and unpacks each image for the default
// snapshotter, so a container can be created from it right away. It
// returns the names of the images imported. A failed import leaves no
// content behind. It is Import with a connection of its own.
func ImportTo(ctx context.Context, address, namespace string, r io.Reader) ([]string, error) {
	if namespace == "" {
		return nil, errors.New("import image: containerd namespace is empty")
	}
	c, err := client.New(address, client.WithDefaultNamespace(namespace), client.WithTimeout(dialTimeout))
	if err != nil {
		return nil, fmt.Errorf("connect to containerd at %s: %w", address, err)
	}
	defer c.Close()
	// An empty snapshotter name means containerd's default (overlayfs
	// here), or the namespace's own default when it has one.
	return Import(namespaces.WithNamespace(ctx, namespace), c, "", r)
}
