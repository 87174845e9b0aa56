package containerd

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/shoal-project/shoal/worker/exec"
)

// image returns the image named ref, unpacked into the executor's
// snapshotter: the local one when the namespace has it (by the name as
// given or as Docker normalises it), else pulled. A failure to find or pull
// it wraps exec.ErrImageUnavailable.
func (e *Executor) image(ctx context.Context, ref string) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w: invalid reference: %w", ref, exec.ErrImageUnavailable, err)
	}
	for _, name := range uniqueNames(ref, named.String()) {
		img, err := e.client.GetImage(ctx, name)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up image %s: %w", name, err)
		}
		if err := e.ensureUnpacked(ctx, img); err != nil {
			return nil, err
		}
		return img, nil
	}
	return e.pull(ctx, ref, named.String())
}

// uniqueNames is the names to look an image up by, without repeats.
func uniqueNames(given, normalised string) []string {
	if given == normalised {
		return []string{given}
	}
	return []string{given, normalised}
}

func (e *Executor) ensureUnpacked(ctx context.Context, img client.Image) error {
	ok, err := img.IsUnpacked(ctx, e.snapshotter)
	if err != nil {
		return fmt.Errorf("check image %s is unpacked: %w", img.Name(), err)
	}
	if ok {
		return nil
	}
	e.log.Info("unpacking image", "image", img.Name(), "snapshotter", e.snapshotter)
	if err := img.Unpack(ctx, e.snapshotter); err != nil {
		return fmt.Errorf("image %s: %w: unpack: %w", img.Name(), exec.ErrImageUnavailable, err)
	}
	return nil
}

// pull fetches and unpacks an image, bounded by the pull timeout.
func (e *Executor) pull(ctx context.Context, given, name string) (client.Image, error) {
	pctx, cancel := context.WithTimeout(ctx, e.cfg.PullTimeout)
	defer cancel()
	e.log.Info("pulling image", "image", name)
	img, err := e.client.Pull(pctx, name,
		client.WithPullUnpack,
		client.WithPullSnapshotter(e.snapshotter),
	)
	if err != nil {
		if ctx.Err() != nil {
			// The caller gave up; that says nothing about the image.
			return nil, fmt.Errorf("pull image %s: %w", name, ctx.Err())
		}
		if pctx.Err() != nil {
			err = fmt.Errorf("no answer within %v: %w", e.cfg.PullTimeout, err)
		}
		return nil, fmt.Errorf("image %q: %w: not present locally and pull of %s failed: %w", given, exec.ErrImageUnavailable, name, err)
	}
	return img, nil
}
