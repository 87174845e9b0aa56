package worker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/reference"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/worker/exec"
)

// Timings of image distribution to this node.
const (
	// imageRetryMin and imageRetryMax bound the back-off after a failed
	// fetch or import, and between attempts to open the image list: a
	// manager that is restarting answers within seconds, and one that
	// cannot serve the image should not be asked many times a second.
	imageRetryMin = time.Second
	imageRetryMax = 30 * time.Second
	// imageLoadTimeout bounds fetching and importing one tarball: the
	// largest the managers take (4 GiB) at 5 MB/s or better.
	imageLoadTimeout = 15 * time.Minute
	// imageWait bounds how long a new task waits for an image the
	// managers distribute and this node is still importing; after it,
	// Prepare looks for (or pulls) the image anyway.
	imageWait = 2 * time.Minute
)

// imageHoldersHeader is dispatcher.ImageHoldersHeader (not imported:
// workers do not link managers).
const imageHoldersHeader = "shoal-image-holders"

// errStopWanted ends a task's start when it was told to stop while it
// waited for its image.
var errStopWanted = errors.New("task told to stop while waiting for its image")

// openFunc opens the tarball of img from a manager; addrs maps manager
// node ids to their addresses.
type openFunc func(ctx context.Context, img *api.Image, addrs map[string]string) (io.ReadCloser, error)

// imageSync keeps this node's runtime holding every image the managers
// distribute: it checks each, fetches and imports what is missing, and
// retries with back-off. It runs beside task handling, never in its way;
// new tasks only wait (bounded) for an image being imported.
type imageSync struct {
	loader exec.ImageLoader
	open   openFunc
	logger *slog.Logger

	mu      sync.Mutex
	want    []*api.Image
	addrs   map[string]string
	present map[string]bool // image ids known to be loaded
	// changed is closed, and replaced, whenever want or present change.
	changed chan struct{}
	kick    chan struct{}
}

func newImageSync(loader exec.ImageLoader, open openFunc, logger *slog.Logger) *imageSync {
	return &imageSync{
		loader: loader, open: open, logger: logger.With("component", "images"),
		present: map[string]bool{}, changed: make(chan struct{}), kick: make(chan struct{}, 1),
	}
}

// broadcastLocked wakes everyone waiting on changed.
func (s *imageSync) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// setWant replaces the list of images the node must have.
func (s *imageSync) setWant(imgs []*api.Image, addrs map[string]string) {
	s.mu.Lock()
	s.want = imgs
	if addrs != nil {
		s.addrs = addrs
	}
	for id := range s.present {
		if !slices.ContainsFunc(imgs, func(i *api.Image) bool { return i.GetId() == id }) {
			delete(s.present, id)
		}
	}
	s.broadcastLocked()
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *imageSync) markPresent(id string) {
	s.mu.Lock()
	if !s.present[id] {
		s.present[id] = true
		s.broadcastLocked()
	}
	s.mu.Unlock()
}

// pending reports whether ref names an image the node must have and has
// not loaded yet, and returns a channel closed at the next change.
func (s *imageSync) pending(ref string) (bool, <-chan struct{}) {
	want := normalizeRef(ref)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, img := range s.want {
		if s.present[img.GetId()] {
			continue
		}
		for _, n := range img.GetNames() {
			if normalizeRef(n) == want {
				return true, s.changed
			}
		}
	}
	return false, s.changed
}

// normalizeRef is ref as Docker normalises it, so that "echo" and
// "docker.io/library/echo:latest" match.
func normalizeRef(ref string) string {
	if named, err := reference.ParseDockerRef(ref); err == nil {
		return named.String()
	}
	return ref
}

// run syncs whenever the list changes, and again after failures, until
// ctx ends.
func (s *imageSync) run(ctx context.Context) {
	var (
		backoff time.Duration
		retry   <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-retry:
		}
		retry = nil
		if s.pass(ctx) {
			backoff = 0
			continue
		}
		if ctx.Err() != nil {
			return
		}
		backoff = min(max(backoff*2, imageRetryMin), imageRetryMax)
		s.logger.Info("images not all loaded; trying again", "in", backoff)
		retry = time.After(backoff)
	}
}

// pass checks every wanted image and loads those missing; false means
// some failed.
func (s *imageSync) pass(ctx context.Context) bool {
	s.mu.Lock()
	want, addrs := s.want, s.addrs
	s.mu.Unlock()
	ok := true
	for _, img := range want {
		if ctx.Err() != nil {
			return false
		}
		if len(img.GetNames()) == 0 {
			continue // nothing a task could refer to
		}
		log := s.logger.With("image", img.GetId(), "names", img.GetNames())
		has, err := s.loader.HasImage(ctx, img)
		if err != nil {
			log.Warn("check image", "err", err)
			ok = false
			continue
		}
		if !has {
			if err := s.load(ctx, img, addrs); err != nil {
				if ctx.Err() == nil {
					log.Warn("load image", "err", err)
				}
				ok = false
				continue
			}
			log.Info("image loaded")
		}
		s.markPresent(img.GetId())
	}
	return ok
}

func (s *imageSync) load(ctx context.Context, img *api.Image, addrs map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, imageLoadTimeout)
	defer cancel()
	rc, err := s.open(ctx, img, addrs)
	if err != nil {
		return fmt.Errorf("fetch: %w", err)
	}
	defer rc.Close()
	if _, err := s.loader.LoadImage(ctx, img, rc); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	return nil
}

// watchImages follows the session's image list into the syncer until ctx
// ends; a broken stream is reopened after a back-off, and never ends the
// session: images are not worth losing the assignments over.
func (a *Agent) watchImages(ctx context.Context, client api.DispatcherClient, sid string) {
	backoff := imageRetryMin
	for ctx.Err() == nil {
		err := a.followImages(ctx, client, sid)
		if ctx.Err() != nil {
			return
		}
		a.logger.Warn("image list stream ended; reopening", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, imageRetryMax)
	}
}

func (a *Agent) followImages(ctx context.Context, client api.DispatcherClient, sid string) error {
	stream, err := client.Images(ctx, &api.ImagesRequest{SessionId: sid})
	if err != nil {
		return err
	}
	md, err := stream.Header()
	if err != nil {
		return err
	}
	addrs := parseHolders(md.Get(imageHoldersHeader))
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		a.images.setWant(msg.GetImages(), addrs)
	}
}

// parseHolders reads "<node id>=<address>" values.
func parseHolders(values []string) map[string]string {
	out := map[string]string{}
	for _, v := range values {
		if id, addr, ok := strings.Cut(v, "="); ok && id != "" && addr != "" {
			out[id] = addr
		}
	}
	return out
}

// fetchImage opens img's tarball on a manager that holds it: the holders
// at their addresses first, then whichever manager the pool gives. The
// returned reader checks the tarball's digest and size at its end.
func (a *Agent) fetchImage(ctx context.Context, img *api.Image, addrs map[string]string) (io.ReadCloser, error) {
	var (
		errs  []error
		tried []string
	)
	for _, addr := range imageSources(img, addrs, a.cfg.Managers != nil) {
		client, err := a.imageClient(ctx, addr)
		if err != nil {
			errs = append(errs, fmt.Errorf("manager %s: %w", cmpAddr(addr), err))
			continue
		}
		sctx, cancel := context.WithCancel(ctx)
		stream, err := client.FetchImage(sctx, &api.FetchImageRequest{Id: img.GetId()})
		if err == nil {
			var first *api.FetchImageChunk
			if first, err = stream.Recv(); err == nil || errors.Is(err, io.EOF) {
				return newTarballReader(img, first.GetData(), stream, cancel, errors.Is(err, io.EOF)), nil
			}
		}
		cancel()
		tried = append(tried, cmpAddr(addr))
		errs = append(errs, fmt.Errorf("manager %s: %w", cmpAddr(addr), err))
	}
	if len(errs) == 0 {
		return nil, errors.New("no manager to fetch it from")
	}
	a.logger.Debug("no manager served the image", "image", img.GetId(), "tried", tried)
	return nil, errors.Join(errs...)
}

func cmpAddr(addr string) string {
	if addr == "" {
		return "(any)"
	}
	return addr
}

// imageSources lists where to fetch img: the known addresses of its
// holders, then "" (any manager) when there is a pool to choose from.
func imageSources(img *api.Image, addrs map[string]string, pool bool) []string {
	var out []string
	for _, h := range img.GetHolders() {
		if a := addrs[h]; a != "" && !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if pool || len(out) == 0 {
		out = append(out, "")
	}
	return out
}

// imageClient is a Dispatcher client on the manager at addr ("" for any).
func (a *Agent) imageClient(ctx context.Context, addr string) (api.DispatcherClient, error) {
	if a.cfg.Managers == nil {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.client, nil
	}
	conn, _, err := a.cfg.Managers.Conn(ctx, addr)
	if err != nil {
		return nil, err
	}
	return api.NewDispatcherClient(conn), nil
}

// tarballReader reads a FetchImage stream as bytes and checks, at the
// end, that they are the tarball the Image names.
type tarballReader struct {
	img    *api.Image
	stream api.Dispatcher_FetchImageClient
	cancel context.CancelFunc
	buf    []byte
	eof    bool
	hash   hash.Hash
	size   int64
	err    error
}

func newTarballReader(img *api.Image, first []byte, stream api.Dispatcher_FetchImageClient, cancel context.CancelFunc, eof bool) *tarballReader {
	r := &tarballReader{img: img, stream: stream, cancel: cancel, buf: first, eof: eof, hash: sha256.New()}
	return r
}

func (r *tarballReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.eof {
			r.err = r.verify()
			return 0, r.err
		}
		chunk, err := r.stream.Recv()
		if errors.Is(err, io.EOF) {
			r.eof = true
			continue
		}
		if err != nil {
			r.err = fmt.Errorf("fetch image %s: %w", r.img.GetId(), err)
			return 0, r.err
		}
		r.buf = chunk.GetData()
	}
	n := copy(p, r.buf)
	r.hash.Write(p[:n])
	r.size += int64(n)
	r.buf = r.buf[n:]
	return n, nil
}

// verify is the end of the stream: io.EOF when the bytes are the
// tarball, an error otherwise.
func (r *tarballReader) verify() error {
	if want := r.img.GetSize(); want > 0 && r.size != want {
		return fmt.Errorf("image %s: the manager sent %d bytes, want %d", r.img.GetId(), r.size, want)
	}
	if got := "sha256:" + hex.EncodeToString(r.hash.Sum(nil)); got != r.img.GetId() {
		return fmt.Errorf("image %s: the manager sent a tarball with digest %s", r.img.GetId(), got)
	}
	return io.EOF
}

func (r *tarballReader) Close() error {
	r.cancel()
	return nil
}

// awaitImage holds a new task's Prepare while the image it runs is one
// the managers distribute and this node is still importing, so that the
// executor finds it rather than trying a registry. The wait is bounded,
// and ends early when the task is told to stop.
func (r *runner) awaitImage(ctx context.Context) error {
	s := r.agent.images
	if s == nil {
		return nil
	}
	r.mu.Lock()
	ref := r.task.GetSpec().GetContainer().GetImage()
	r.mu.Unlock()
	deadline := time.NewTimer(imageWait)
	defer deadline.Stop()
	logged := false
	for {
		pending, changed := s.pending(ref)
		if !pending {
			return nil
		}
		if !logged {
			r.logger.Info("waiting for the image to be loaded", "image", ref)
			logged = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			r.logger.Warn("image still not loaded; preparing anyway", "image", ref, "waited", imageWait)
			return nil
		case <-changed:
		case <-r.changed:
			if desired, removed := r.snapshot(); removed || desired >= api.TaskState_TASK_STATE_SHUTDOWN {
				r.poke() // for run, which looks at it next
				return errStopWanted
			}
		}
	}
}
