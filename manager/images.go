package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/controlapi"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
)

// Timings of image replication between managers.
const (
	// replicateRetryMin and replicateRetryMax bound the back-off after a
	// failed copy: a holder that is restarting answers again within
	// seconds, one that is gone should not be asked many times a second.
	replicateRetryMin = time.Second
	replicateRetryMax = 30 * time.Second
	// copyTimeout bounds copying one tarball from another manager: the
	// largest one (controlapi.MaxImageSize) at 5 MB/s or better.
	copyTimeout = 15 * time.Minute
	// collectEvery is how often tarballs the store no longer records are
	// looked for; removing them is never urgent.
	collectEvery = time.Minute
	// collectGrace keeps a tarball the store does not record for this
	// long after it was written: LoadImage keeps the file just before it
	// records the image, and a follower applies that record a little
	// after the leader commits it.
	collectGrace = 10 * time.Minute
	// holderRetries bounds retries of adding this manager as a holder when
	// another write to the image wins the race.
	holderRetries = 5
)

// ImageDir is where a manager keeps image tarballs under its data dir.
func ImageDir(dataDir string) string { return filepath.Join(dataDir, "images") }

// imageReplicator makes this manager hold every loaded image: it copies
// the tarballs it lacks from a manager that holds them, records itself as
// a holder, and removes tarballs the store no longer records. It runs on
// every manager, leader or not, so that any of them can give images to
// nodes, including nodes that join after the load. It copies through
// Config.Dial; without it, it keeps only the tarballs loaded through this
// manager.
type imageReplicator struct {
	m      *Manager
	dir    *tarballs.Dir
	logger *slog.Logger
}

func newImageReplicator(m *Manager, dir *tarballs.Dir) *imageReplicator {
	return &imageReplicator{m: m, dir: dir, logger: m.logger.With("component", "images")}
}

// run replicates until ctx ends.
func (r *imageReplicator) run(ctx context.Context) {
	sub := r.m.raft.Store().Subscribe()
	defer sub.Close()
	collect := time.NewTicker(collectEvery)
	defer collect.Stop()
	var backoff time.Duration
	for {
		var retry <-chan time.Time
		if r.reconcile(ctx) {
			backoff = 0
		} else {
			backoff = min(max(backoff*2, replicateRetryMin), replicateRetryMax)
			retry = time.After(backoff)
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-retry:
				break wait
			case <-collect.C:
				r.collect()
			case <-sub.Ready():
				if store.Affects(sub.Next(), store.IsImage) {
					break wait
				}
			}
		}
	}
}

// reconcile copies and records what this manager lacks; false means
// something failed and should be tried again later.
func (r *imageReplicator) reconcile(ctx context.Context) bool {
	var (
		imgs     []*api.Image
		addrs    = map[string]string{}
		managers = map[string]bool{}
	)
	r.m.raft.Store().View(func(tx store.ReadTx) {
		imgs = tx.Images()
		for _, n := range tx.Nodes() {
			if n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER {
				managers[n.GetId()] = true
				if a := n.GetManagerStatus().GetRaftAddr(); a != "" {
					addrs[n.GetId()] = a
				}
			}
		}
	})
	ok := true
	for _, img := range imgs {
		if ctx.Err() != nil {
			return true
		}
		log := r.logger.With("image", img.GetId(), "names", img.GetNames())
		if !r.dir.Has(img.GetId()) {
			if err := r.copy(ctx, img, addrs); err != nil {
				if ctx.Err() == nil {
					log.Warn("copy image tarball from another manager; will retry", "err", err)
				}
				ok = false
				continue
			}
			log.Info("copied image tarball from another manager")
		}
		if err := r.updateHolders(ctx, img.GetId(), managers); err != nil {
			if ctx.Err() == nil {
				log.Warn("record image holder; will retry", "err", err)
			}
			ok = false
		}
	}
	return ok
}

// copy fetches img's tarball from a holder other than this manager.
func (r *imageReplicator) copy(ctx context.Context, img *api.Image, addrs map[string]string) error {
	dial := r.m.cfg.Dial
	if dial == nil {
		return errors.New("this manager cannot reach the others (no peer dialer)")
	}
	var errs []error
	for _, holder := range img.GetHolders() {
		if holder == r.m.cfg.NodeID {
			continue
		}
		addr := addrs[holder]
		if addr == "" {
			errs = append(errs, fmt.Errorf("holder %s: no known address", holder))
			continue
		}
		err := r.copyFrom(ctx, dial, addr, img.GetId())
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("holder %s at %s: %w", holder, addr, err))
	}
	if len(errs) == 0 {
		return errors.New("no other manager holds it")
	}
	return errors.Join(errs...)
}

func (r *imageReplicator) copyFrom(ctx context.Context, dial Dialer, addr, id string) error {
	ctx, cancel := context.WithTimeout(ctx, copyTimeout)
	defer cancel()
	conn, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	stream, err := api.NewDispatcherClient(conn).FetchImage(ctx, &api.FetchImageRequest{Id: id})
	if err != nil {
		return err
	}
	in, err := r.dir.Receive(func() ([]byte, error) {
		chunk, err := stream.Recv()
		return chunk.GetData(), err
	}, controlapi.MaxImageSize)
	if err != nil {
		return err
	}
	if in.ID != id {
		in.Discard()
		return fmt.Errorf("it sent a tarball with digest %s", in.ID)
	}
	return in.Keep()
}

// updateHolders makes this manager a holder of id, and, on the leader,
// drops holders that are no longer managers (they serve no tarballs).
func (r *imageReplicator) updateHolders(ctx context.Context, id string, managers map[string]bool) error {
	self := r.m.cfg.NodeID
	leading := r.m.raft.IsLeader()
	for i := 0; ; i++ {
		var cur *api.Image
		r.m.raft.Store().View(func(tx store.ReadTx) { cur = tx.Image(id) })
		if cur == nil {
			return nil // removed meanwhile; collect takes the file
		}
		holders := slices.Clone(cur.GetHolders())
		if !slices.Contains(holders, self) {
			holders = append(holders, self)
		}
		if leading {
			holders = slices.DeleteFunc(holders, func(h string) bool { return h != self && !managers[h] })
		}
		if slices.Equal(holders, cur.GetHolders()) {
			return nil
		}
		upd := proto.Clone(cur).(*api.Image)
		upd.Holders = holders
		upd.Meta.UpdatedAt = timestamppb.Now()
		err := r.m.raft.Propose(ctx, store.Update(upd))
		if err == nil || (!errors.Is(err, store.ErrSequenceConflict) && !errors.Is(err, store.ErrNotFound)) || i >= holderRetries {
			return err
		}
	}
}

// collect removes tarballs the store no longer records (their image was
// replaced by a newer load of all its names), once they are old enough
// not to be a load that is being recorded right now.
func (r *imageReplicator) collect() {
	kept, err := r.dir.List()
	if err != nil {
		r.logger.Warn("list image tarballs", "err", err)
		return
	}
	for _, k := range kept {
		if time.Since(k.ModTime) < collectGrace {
			continue
		}
		var img *api.Image
		r.m.raft.Store().View(func(tx store.ReadTx) { img = tx.Image(k.ID) })
		if img != nil {
			continue
		}
		if err := r.dir.Remove(k.ID); err != nil {
			r.logger.Warn("remove image tarball no image uses", "image", k.ID, "err", err)
			continue
		}
		r.logger.Info("removed image tarball no image uses", "image", k.ID)
	}
}
