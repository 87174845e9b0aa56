package image

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
)

// PurgeNamespace deletes everything in a containerd namespace, then the
// namespace: tasks (killed), containers, snapshots, images, leases and
// content.
func PurgeNamespace(ctx context.Context, address, namespace string) error {
	c, err := containerd.New(address)
	if err != nil {
		return fmt.Errorf("connect to containerd: %w", err)
	}
	defer c.Close()
	ctx = namespaces.WithNamespace(ctx, namespace)
	var errs []error
	cs, err := c.Containers(ctx)
	if err != nil {
		return err
	}
	for _, ctr := range cs {
		if task, err := ctr.Task(ctx, nil); err == nil {
			task.Kill(ctx, syscall.SIGKILL)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if ch, err := task.Wait(wctx); err == nil {
				select {
				case <-ch:
				case <-wctx.Done():
				}
			}
			cancel()
			if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete task %s: %w", ctr.ID(), err))
			}
		}
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete container %s: %w", ctr.ID(), err))
		}
	}
	imgs, err := c.ImageService().List(ctx)
	if err == nil {
		for _, img := range imgs {
			if err := c.ImageService().Delete(ctx, img.Name); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete image %s: %w", img.Name, err))
			}
		}
	}
	if ls, err := c.LeasesService().List(ctx); err == nil {
		for _, l := range ls {
			c.LeasesService().Delete(ctx, l, leases.SynchronousDelete)
		}
	}
	// Snapshots are chained: remove leaves first, until none is left.
	sn := c.SnapshotService("")
	for round := 0; round < 20; round++ {
		var keys []string
		sn.Walk(ctx, func(ctx context.Context, info snapshots.Info) error {
			keys = append(keys, info.Name)
			return nil
		})
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			sn.Remove(ctx, k)
		}
	}
	var digests []content.Info
	c.ContentStore().Walk(ctx, func(info content.Info) error {
		digests = append(digests, info)
		return nil
	})
	for _, info := range digests {
		c.ContentStore().Delete(ctx, info.Digest)
	}
	if err := c.NamespaceService().Delete(ctx, namespace); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete namespace: %w", err))
	}
	return errors.Join(errs...)
}
