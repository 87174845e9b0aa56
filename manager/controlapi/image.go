package controlapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
)

const (
	// MaxImageSize bounds one image tarball. Every manager keeps a copy
	// and every node imports it, so a runaway or mistaken upload (a disk
	// image, a home directory) must stop early; 4 GiB still holds the
	// largest images services commonly run (CUDA and ML bases are 2-4 GB).
	MaxImageSize = 4 << 30
	// recordTimeout bounds recording a received image in raft. It runs
	// after the client may have gone (the upload was complete), so it
	// needs its own bound; a raft write takes milliseconds unless there
	// is no quorum.
	recordTimeout = 30 * time.Second
	// recordRetries bounds retries of a record that lost a race with
	// another write to the same images.
	recordRetries = 5
)

// Option configures a Server.
type Option func(*Server)

// WithImageStore lets the server take image tarballs (LoadImage), kept in
// dir. Without it LoadImage is refused.
func WithImageStore(dir *tarballs.Dir) Option {
	return func(s *Server) { s.images = imageStore{dir: dir, max: MaxImageSize} }
}

// imageStore is where LoadImage keeps tarballs, and how large it takes
// them (tests lower the limit).
type imageStore struct {
	dir *tarballs.Dir
	max int64
}

// LoadImage receives an image tarball, checks that it is one containerd
// can import and keeps it; the Image it records makes the other managers
// copy it and every node import it. Nothing is recorded or kept unless
// the whole tarball arrived and is valid.
func (s *Server) LoadImage(stream api.Control_LoadImageServer) error {
	if s.images.dir == nil {
		return status.Error(codes.Unimplemented, "this manager keeps no images")
	}
	ctx := stream.Context()
	in, err := s.images.dir.Receive(func() ([]byte, error) {
		req, err := stream.Recv()
		if err != nil {
			return nil, err // io.EOF: the client sent it all
		}
		return req.GetData(), nil
	}, s.images.max)
	if errors.Is(err, tarballs.ErrTooLarge) {
		return status.Errorf(codes.InvalidArgument, "the image tarball is larger than the limit of %s: trim the image (a smaller base, fewer layers) or save one image per tarball", sizeLimit(s.images.max))
	}
	if err != nil {
		return toStatus(err)
	}
	names, err := inspectIncoming(in)
	if err != nil {
		in.Discard()
		if errors.Is(err, image.ErrNotImage) || errors.Is(err, image.ErrNoNames) {
			return status.Errorf(codes.InvalidArgument, "%v: give an OCI image layout tarball or the output of `docker save NAME:TAG`", err)
		}
		return toStatus(err)
	}
	if err := ctx.Err(); err != nil {
		in.Discard()
		return status.FromContextError(err).Err()
	}
	if err := in.Keep(); err != nil {
		return toStatus(err)
	}
	// The upload is complete and valid: record it even if the client
	// stops waiting now.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
	defer cancel()
	img, err := s.recordImage(rctx, in.ID, in.Size, names)
	if err != nil {
		if !s.holds(in.ID) {
			// Best effort: a file nothing records is collected later too.
			_ = s.images.dir.Remove(in.ID)
		}
		return toStatus(err)
	}
	return stream.SendAndClose(&api.LoadImageResponse{Image: img})
}

func inspectIncoming(in *tarballs.Incoming) ([]string, error) {
	f, err := in.Open()
	if err != nil {
		return nil, fmt.Errorf("read back image tarball: %w", err)
	}
	defer f.Close()
	return image.Inspect(f)
}

// sizeLimit prints a byte limit for people.
func sizeLimit(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d bytes", n)
}

// holds reports whether the store records this manager as a holder of id.
func (s *Server) holds(id string) bool {
	var img *api.Image
	s.view(func(tx store.ReadTx) { img = tx.Image(id) })
	return slices.Contains(img.GetHolders(), s.selfID)
}

// recordImage creates or updates the Image of a kept tarball: its names
// are added, and this manager becomes a holder. The names move to it from
// any other image that had them, as a tag moves in Docker; an image left
// without names is removed, since no node could refer to it.
func (s *Server) recordImage(ctx context.Context, id string, size int64, names []string) (*api.Image, error) {
	for i := 0; ; i++ {
		now := timestamppb.New(s.now())
		var actions []*api.StoreAction
		s.view(func(tx store.ReadTx) { actions = imageActions(tx, id, size, names, s.selfID, now) })
		err := s.raft.Propose(ctx, actions...)
		if err == nil {
			var img *api.Image
			s.view(func(tx store.ReadTx) { img = tx.Image(id) })
			if img == nil {
				return nil, status.Errorf(codes.Aborted, "image %s was removed while it was recorded: load it again", id)
			}
			return img, nil
		}
		if (!errors.Is(err, store.ErrSequenceConflict) && !errors.Is(err, store.ErrExist) && !errors.Is(err, store.ErrNotFound)) || i >= recordRetries {
			return nil, fmt.Errorf("record image %s: %w", id, err)
		}
	}
}

// imageActions are the store writes that record tarball id, holding
// names, as kept by holder.
func imageActions(tx store.ReadTx, id string, size int64, names []string, holder string, now *timestamppb.Timestamp) []*api.StoreAction {
	var actions []*api.StoreAction
	if cur := tx.Image(id); cur == nil {
		actions = append(actions, store.Create(&api.Image{
			Id:      id,
			Meta:    &api.Meta{CreatedAt: now, UpdatedAt: now},
			Names:   slices.Clone(names),
			Size:    size,
			Holders: []string{holder},
		}))
	} else {
		upd := proto.Clone(cur).(*api.Image)
		for _, n := range names {
			if !slices.Contains(upd.Names, n) {
				upd.Names = append(upd.Names, n)
			}
		}
		if !slices.Contains(upd.Holders, holder) {
			upd.Holders = append(upd.Holders, holder)
		}
		if !proto.Equal(upd, cur) {
			upd.Meta.UpdatedAt = now
			actions = append(actions, store.Update(upd))
		}
	}
	for _, other := range tx.Images() {
		if other.GetId() == id {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(other.GetNames()), func(n string) bool { return slices.Contains(names, n) })
		switch {
		case len(kept) == len(other.GetNames()):
		case len(kept) == 0:
			actions = append(actions, store.Remove(other))
		default:
			upd := proto.Clone(other).(*api.Image)
			upd.Names = kept
			upd.Meta.UpdatedAt = now
			actions = append(actions, store.Update(upd))
		}
	}
	return actions
}

// ListImages returns the loaded images, ordered by id.
func (s *Server) ListImages(ctx context.Context, _ *api.ListImagesRequest) (*api.ListImagesResponse, error) {
	var imgs []*api.Image
	s.view(func(tx store.ReadTx) { imgs = tx.Images() })
	return &api.ListImagesResponse{Images: imgs}, nil
}
