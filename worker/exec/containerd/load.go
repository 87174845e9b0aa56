package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/worker/exec"
)

// LabelImageTarball is put on every image imported from a tarball the
// managers distribute: the tarball's digest (the Image id). It tells the
// image loaded from that tarball from an older image of the same name.
const LabelImageTarball = "io.shoal.image.tarball"

var _ exec.ImageLoader = (*Executor)(nil)

// HasImage reports whether every name of img refers to an image imported
// from img's tarball.
func (e *Executor) HasImage(ctx context.Context, img *api.Image) (_ bool, err error) {
	defer func() { err = markUnavailable(err) }()
	ctx = e.nsContext(ctx)
	is := e.client.ImageService()
	for _, name := range img.GetNames() {
		i, err := is.Get(ctx, name)
		if errdefs.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("look up image %s: %w", name, err)
		}
		if i.Labels[LabelImageTarball] != img.GetId() {
			return false, nil
		}
	}
	return true, nil
}

// LoadImage imports img's tarball from r, unpacked for the executor's
// snapshotter, and labels the images it names with the tarball's digest
// once r has been read to its end without error.
func (e *Executor) LoadImage(ctx context.Context, img *api.Image, r io.Reader) (_ []string, err error) {
	defer func() { err = markUnavailable(err) }()
	if err := e.ensureSetUp(ctx); err != nil {
		return nil, err
	}
	ctx = e.nsContext(ctx)
	// Import reads r to its end, where the manager's stream checks the
	// tarball's digest, before it names anything.
	names, err := image.Import(ctx, e.client, e.snapshotter, r)
	if err != nil {
		if !errors.Is(err, image.ErrNoneNamed) {
			// The import named images, then failed (unpacking): the
			// names no longer refer to what their label says.
			e.labelImages(ctx, img.GetNames(), "")
		}
		return nil, fmt.Errorf("load image %s: %w", img.GetId(), err)
	}
	if err := e.labelImages(ctx, names, img.GetId()); err != nil {
		return names, fmt.Errorf("load image %s: %w", img.GetId(), err)
	}
	for _, want := range img.GetNames() {
		if !slices.Contains(names, want) {
			return names, fmt.Errorf("load image %s: the import created %q, not %s, which the managers read from the same tarball", img.GetId(), names, want)
		}
	}
	e.log.Info("loaded image", "image", img.GetId(), "names", names)
	return names, nil
}

// labelImages sets the tarball label of the named images to id, or
// removes it when id is empty (best effort: a missing image is skipped).
func (e *Executor) labelImages(ctx context.Context, names []string, id string) error {
	is := e.client.ImageService()
	labels := map[string]string{}
	if id != "" {
		labels[LabelImageTarball] = id
	}
	for _, name := range names {
		_, err := is.Update(ctx, images.Image{Name: name, Labels: labels}, "labels."+LabelImageTarball)
		if err != nil && !(id == "" && errdefs.IsNotFound(err)) {
			return fmt.Errorf("label image %s: %w", name, err)
		}
	}
	return nil
}
