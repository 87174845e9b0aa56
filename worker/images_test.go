package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/worker/exec"
)

// --- fakes ---------------------------------------------------------------

// loaderExecutor is a fake executor that can load images: it keeps what
// it was given and records each load among the executor's calls.
type loaderExecutor struct {
	*fakeExecutor
	imgMu  sync.Mutex
	loaded map[string][]byte // image id → tarball read
}

var _ exec.ImageLoader = (*loaderExecutor)(nil)

func newLoaderExecutor(present ...string) *loaderExecutor {
	e := &loaderExecutor{fakeExecutor: newFakeExecutor(), loaded: map[string][]byte{}}
	for _, id := range present {
		e.loaded[id] = nil
	}
	return e
}

func (e *loaderExecutor) HasImage(ctx context.Context, img *api.Image) (bool, error) {
	e.imgMu.Lock()
	defer e.imgMu.Unlock()
	_, ok := e.loaded[img.GetId()]
	return ok, nil
}

// LoadImage reads r to its end, as the real one does; an error there
// loads nothing.
func (e *loaderExecutor) LoadImage(ctx context.Context, img *api.Image, r io.Reader) ([]string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	e.record("load", img.GetId())
	e.imgMu.Lock()
	e.loaded[img.GetId()] = b
	e.imgMu.Unlock()
	return img.GetNames(), nil
}

func (e *loaderExecutor) tarball(id string) ([]byte, bool) {
	e.imgMu.Lock()
	defer e.imgMu.Unlock()
	b, ok := e.loaded[id]
	return b, ok
}

// imageDispatcher adds the image calls to the fake dispatcher: Images
// sends what the test queues; FetchImage serves tarballs, failing the
// first calls when told to.
type imageDispatcher struct {
	*fakeDispatcher
	lists chan *api.ImagesMessage

	imgMu    sync.Mutex
	tarballs map[string][]byte
	failures int            // FetchImage calls still to refuse
	fetches  map[string]int // by image id
}

func newImageDispatcher() *imageDispatcher {
	return &imageDispatcher{fakeDispatcher: newFakeDispatcher(), lists: make(chan *api.ImagesMessage, 16), tarballs: map[string][]byte{}, fetches: map[string]int{}}
}

func (d *imageDispatcher) Images(req *api.ImagesRequest, stream api.Dispatcher_ImagesServer) error {
	if err := stream.SendHeader(metadata.Pairs(imageHoldersHeader, "m1=10.0.0.1:4242")); err != nil {
		return err
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case msg := <-d.lists:
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

func (d *imageDispatcher) FetchImage(req *api.FetchImageRequest, stream api.Dispatcher_FetchImageServer) error {
	d.imgMu.Lock()
	d.fetches[req.GetId()]++
	b, ok := d.tarballs[req.GetId()]
	fail := d.failures > 0
	if fail {
		d.failures--
	}
	d.imgMu.Unlock()
	if !ok || fail {
		return status.Errorf(codes.NotFound, "this manager does not hold image %s", req.GetId())
	}
	for len(b) > 0 {
		n := min(len(b), 1000)
		if err := stream.Send(&api.FetchImageChunk{Data: b[:n]}); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

func (d *imageDispatcher) fetchCount(id string) int {
	d.imgMu.Lock()
	defer d.imgMu.Unlock()
	return d.fetches[id]
}

// startImageAgent is startAgent for an executor that loads images and a
// dispatcher that distributes them.
func startImageAgent(t *testing.T, exe *loaderExecutor, disp *imageDispatcher) *harness {
	t.Helper()
	h := runAgent(t, &harness{exe: exe.fakeExecutor, disp: disp.fakeDispatcher}, exe, disp)
	if h.agent.images == nil {
		t.Fatal("the agent did not find the executor's ImageLoader")
	}
	return h
}

func tarballImage(content string, names ...string) (*api.Image, []byte) {
	b := []byte(content)
	sum := sha256.Sum256(b)
	return &api.Image{Id: "sha256:" + hex.EncodeToString(sum[:]), Names: names, Size: int64(len(b)), Holders: []string{"m1"}}, b
}

func withImage(t *api.Task, ref string) *api.Task {
	t.Spec.Container.Image = ref
	return t
}

// waitPending waits until the agent knows ref as an image it must load.
func waitPending(t *testing.T, a *Agent, ref string) {
	t.Helper()
	await.For(t, "the agent to learn of "+ref, func() (bool, string) {
		p, _ := a.images.pending(ref)
		return p, "not pending"
	})
}

// --- tests ---------------------------------------------------------------

// TestAgentLoadsImages gives the agent an image list: it loads what the
// node lacks (retrying a manager that could not serve it), leaves alone
// what it has, and holds a task that needs a missing image until it is
// loaded.
func TestAgentLoadsImages(t *testing.T) {
	have, _ := tarballImage("have", "shoal.test/have:1")
	want, wantTar := tarballImage("want", "docker.io/library/want:1")
	nameless, namelessTar := tarballImage("nameless")
	exe := newLoaderExecutor(have.GetId())
	disp := newImageDispatcher()
	disp.tarballs[want.GetId()] = wantTar
	disp.tarballs[nameless.GetId()] = namelessTar
	disp.failures = 1
	h := startImageAgent(t, exe, disp)

	disp.lists <- &api.ImagesMessage{Images: []*api.Image{have, want, nameless}}
	// The short name matches the full one the managers list.
	waitPending(t, h.agent, "want:1")
	h.disp.full(t, 1, withImage(task("t1", stAssigned, stRunning), "want:1"))
	h.disp.waitState(t, "t1", stRunning)

	if b, ok := exe.tarball(want.GetId()); !ok || !bytes.Equal(b, wantTar) {
		t.Errorf("loaded %q (%v), want %q", b, ok, wantTar)
	}
	exe.mu.Lock()
	calls := slices.Clone(exe.calls)
	exe.mu.Unlock()
	load, prepare := slices.Index(calls, "load "+want.GetId()), slices.Index(calls, "prepare t1")
	if load < 0 || prepare < load {
		t.Errorf("calls %q: want the image loaded before the task's Prepare", calls)
	}
	if n := disp.fetchCount(want.GetId()); n != 2 {
		t.Errorf("fetched the missing image %d times, want 2 (one refused, one served)", n)
	}
	for _, img := range []*api.Image{have, nameless} {
		if n := disp.fetchCount(img.GetId()); n != 0 {
			t.Errorf("fetched %v %d times, want never", img.GetNames(), n)
		}
	}
	if p, _ := h.agent.images.pending("want:1"); p {
		t.Errorf("the loaded image is still pending")
	}
}

// TestAgentRefusesCorruptTarball serves bytes that are not the image's
// tarball: the import fails at the end of the stream and is retried.
func TestAgentRefusesCorruptTarball(t *testing.T) {
	img, _ := tarballImage("the real bytes", "shoal.test/web:1")
	exe := newLoaderExecutor()
	disp := newImageDispatcher()
	disp.tarballs[img.GetId()] = []byte("other bytes, same length")
	h := startImageAgent(t, exe, disp)
	disp.lists <- &api.ImagesMessage{Images: []*api.Image{img}}
	await.For(t, "a second fetch after the failed import", func() (bool, string) {
		n := disp.fetchCount(img.GetId())
		return n >= 2, fmt.Sprintf("%d fetches", n)
	})
	if _, ok := exe.tarball(img.GetId()); ok {
		t.Errorf("a tarball with the wrong digest was loaded")
	}
	if p, _ := h.agent.images.pending("shoal.test/web:1"); !p {
		t.Errorf("the image counts as loaded")
	}
}

// TestAgentStopsTaskWaitingForImage removes a task while it waits for an
// image that cannot be had: it stops at once, never prepared.
func TestAgentStopsTaskWaitingForImage(t *testing.T) {
	img, _ := tarballImage("nowhere", "shoal.test/web:1")
	exe := newLoaderExecutor()
	disp := newImageDispatcher() // serves no tarball at all
	h := startImageAgent(t, exe, disp)
	disp.lists <- &api.ImagesMessage{Images: []*api.Image{img}}
	waitPending(t, h.agent, "shoal.test/web:1")
	t1 := withImage(task("t1", stAssigned, stRunning), "shoal.test/web:1")
	h.disp.full(t, 1, t1)
	await.For(t, "the task to wait for its image", func() (bool, string) {
		st := h.disp.last("t1").status.GetState()
		return st == api.TaskState_TASK_STATE_PREPARING, api.StateName(st)
	})
	h.disp.delta(t, 1, update(withDesired(t1, stShutdown)))
	h.disp.waitState(t, "t1", stShutdown)
	if slices.Contains(exe.verbs("t1"), "prepare") {
		t.Errorf("calls for t1 = %q: it was prepared", exe.verbs("t1"))
	}
}

func TestTarballReader(t *testing.T) {
	img, content := tarballImage("hello, tarball", "shoal.test/web:1")
	tests := []struct {
		name   string
		chunks []string
		err    error // from the stream after the chunks; nil is a clean end
		want   string
	}{
		{name: "whole", chunks: []string{"hello, ", "", "tarball"}, want: "digest ok"},
		{name: "other bytes", chunks: []string{"hello, tarbull"}, want: "digest"},
		{name: "short", chunks: []string{"hello"}, want: "sent 5 bytes"},
		{name: "stream broke", chunks: []string{"hello"}, err: status.Error(codes.Unavailable, "gone"), want: "gone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &chunkStream{chunks: tt.chunks, err: tt.err}
			first, _ := s.Recv()
			r := newTarballReader(img, first.GetData(), s, func() {}, false)
			b, err := io.ReadAll(r)
			if tt.want == "digest ok" {
				if err != nil || !bytes.Equal(b, content) {
					t.Fatalf("read %q, %v; want the tarball", b, err)
				}
				return
			}
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("read %q, %v; want an error mentioning %q", b, err, tt.want)
			}
			if _, again := r.Read(make([]byte, 1)); again == nil || errors.Is(again, io.EOF) {
				t.Errorf("a second read after the failure returned %v", again)
			}
		})
	}
}

// chunkStream is a FetchImage client stream over fixed chunks.
type chunkStream struct {
	grpc.ClientStream
	chunks []string
	err    error
}

func (s *chunkStream) Recv() (*api.FetchImageChunk, error) {
	if len(s.chunks) == 0 {
		if s.err != nil {
			return nil, s.err
		}
		return nil, io.EOF
	}
	c := s.chunks[0]
	s.chunks = s.chunks[1:]
	return &api.FetchImageChunk{Data: []byte(c)}, nil
}

func TestImageSources(t *testing.T) {
	addrs := parseHolders([]string{"m1=10.0.0.1:4242", "m2=10.0.0.2:4242", "bad", "=x", "m3="})
	if len(addrs) != 2 {
		t.Fatalf("parseHolders kept %v, want m1 and m2 only", addrs)
	}
	tests := []struct {
		holders []string
		pool    bool
		want    []string
	}{
		{[]string{"m2", "m1", "m2"}, true, []string{"10.0.0.2:4242", "10.0.0.1:4242", ""}},
		{[]string{"m9"}, true, []string{""}},
		{[]string{"m1"}, false, []string{"10.0.0.1:4242"}},
		{nil, false, []string{""}},
	}
	for _, tt := range tests {
		if got := imageSources(&api.Image{Holders: tt.holders}, addrs, tt.pool); !slices.Equal(got, tt.want) {
			t.Errorf("imageSources(%v, pool %v) = %q, want %q", tt.holders, tt.pool, got, tt.want)
		}
	}
}
