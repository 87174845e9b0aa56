package dispatcher

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/manager/store"
)

const (
	// imagesCoalesce lets a burst of image changes (a load that moves
	// names off older images) go out as one list.
	imagesCoalesce = 20 * time.Millisecond
	// fetchChunk is how much of a tarball one FetchImage message carries:
	// well under gRPC's default 4 MiB message limit, and large enough that
	// per-message overhead is lost in the copy.
	fetchChunk = 1 << 20
)

// ImageHoldersHeader is the header of an Images stream that tells the
// worker where to fetch tarballs: one "<manager node id>=<host:port>"
// value per manager, so that the holders an Image names can be reached.
// It is read when the stream opens; a manager that joins later is found
// by trying the managers the session listed.
const ImageHoldersHeader = "shoal-image-holders"

// managerAddrs is the ImageHoldersHeader of the cluster in tx.
func managerAddrs(tx store.ReadTx) []string {
	var out []string
	for _, n := range tx.Nodes() {
		if addr := n.GetManagerStatus().GetRaftAddr(); n.GetRole() == api.NodeRole_NODE_ROLE_MANAGER && addr != "" {
			out = append(out, n.GetId()+"="+addr)
		}
	}
	sort.Strings(out)
	return out
}

// Images streams the images every node must have: the whole list now and
// again after every change, with the managers' addresses in the header.
// A session has one Images stream: a new one replaces the old.
func (d *Dispatcher) Images(req *api.ImagesRequest, stream api.Dispatcher_ImagesServer) error {
	ctx := stream.Context()
	s, err := d.lookup(ctx, req.GetSessionId())
	if err != nil {
		return err
	}
	stop, release := d.claimStream(s, streamImages)
	defer release()
	// Images only needs to know that something changed: a reset (a
	// worker that fell behind) sends the whole list, as every change does.
	sub := d.raft.Store().SubscribeBounded(streamQueueLimit)
	defer sub.Close()
	var addrs []string
	d.raft.Store().View(func(tx store.ReadTx) { addrs = managerAddrs(tx) })
	if err := stream.SendHeader(metadata.MD{ImageHoldersHeader: addrs}); err != nil {
		return err
	}
	send := func() error {
		var imgs []*api.Image
		d.raft.Store().View(func(tx store.ReadTx) { imgs = tx.Images() })
		return sendOrStop(ctx, stream, &api.ImagesMessage{Images: imgs}, stop, s.done)
	}
	if err := send(); err != nil {
		return streamEnd(err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return nil
		case <-stop:
			return errStreamReplaced
		case <-sub.Ready():
		}
		if !store.Affects(sub.Next(), store.IsImage) {
			continue
		}
		timer := time.NewTimer(imagesCoalesce)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
		sub.Next()
		if err := send(); err != nil {
			return streamEnd(err)
		}
	}
}

// FetchImage streams a tarball this manager holds, in chunks. Any manager
// serves it, leader or not: the tarballs are on every holder's disk, and
// spreading the copies to many nodes over several managers is the point.
// NotFound means this manager lacks it; the message names the holders.
func (d *Dispatcher) FetchImage(req *api.FetchImageRequest, stream api.Dispatcher_FetchImageServer) error {
	id := req.GetId()
	if !image.ValidDigest(id) {
		return status.Errorf(codes.InvalidArgument, "id %q: want an image digest, sha256:<64 hex digits>", id)
	}
	var img *api.Image
	d.raft.Store().View(func(tx store.ReadTx) { img = tx.Image(id) })
	if img == nil {
		return status.Errorf(codes.NotFound, "image %s is not loaded in this cluster", id)
	}
	if d.cfg.Tarballs == nil {
		return status.Errorf(codes.NotFound, "this manager keeps no image tarballs; image %s is held by %s", id, strings.Join(img.GetHolders(), ", "))
	}
	f, err := d.cfg.Tarballs.OpenTarball(id)
	if errors.Is(err, fs.ErrNotExist) {
		return status.Errorf(codes.NotFound, "this manager does not hold image %s (yet); it is held by %s", id, strings.Join(img.GetHolders(), ", "))
	}
	if err != nil {
		return status.Errorf(codes.Internal, "open image %s: %v", id, err)
	}
	defer f.Close()
	// gRPC marshals a message within Send, so the buffer is free for the
	// next chunk when Send returns.
	buf := make([]byte, fetchChunk)
	for {
		n, err := io.ReadFull(f, buf)
		if n > 0 {
			if serr := stream.Send(&api.FetchImageChunk{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return nil
		case err != nil:
			return status.Error(codes.Internal, fmt.Sprintf("read image %s: %v", id, err))
		}
	}
}
