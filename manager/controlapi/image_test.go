package controlapi

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testgrpc"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/manager/state"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
)

// imageServer is a Control server that keeps images in a temp dir, served
// over an in-memory connection.
type imageServer struct {
	raft   *state.Node
	dir    string
	client api.ControlClient
}

func setupImages(t *testing.T, max int64) *imageServer {
	t.Helper()
	r := newRaft(t)
	dir := filepath.Join(t.TempDir(), "images")
	d, err := tarballs.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, r, WithImageStore(d))
	if max > 0 {
		s.images.max = max
	}
	return &imageServer{raft: r, dir: dir, client: serveControl(t, s)}
}

func serveControl(t *testing.T, s *Server) api.ControlClient {
	t.Helper()
	conn := testgrpc.Serve(t, func(srv *grpc.Server) { api.RegisterControlServer(srv, s) })
	return api.NewControlClient(conn)
}

// ociImage is a small image tarball naming ref; content makes it unique.
func ociImage(t *testing.T, ref, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if _, err := testimage.WriteOCI(&buf, testimage.Image{Ref: ref, Files: []testimage.File{{Path: "/data", Data: []byte(content)}}}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// load sends data in chunks of size chunk, as shoalctl does.
func load(ctx context.Context, c api.ControlClient, data []byte, chunk int) (*api.Image, error) {
	stream, err := c.LoadImage(ctx)
	if err != nil {
		return nil, err
	}
	for len(data) > 0 {
		n := min(chunk, len(data))
		if err := stream.Send(&api.LoadImageRequest{Data: data[:n]}); err != nil {
			break // the server ended the stream; CloseAndRecv says why
		}
		data = data[n:]
	}
	resp, err := stream.CloseAndRecv()
	return resp.GetImage(), err
}

func (s *imageServer) images() []*api.Image {
	var imgs []*api.Image
	s.raft.Store().View(func(tx store.ReadTx) { imgs = tx.Images() })
	return imgs
}

// files lists the image directory.
func (s *imageServer) files(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func tarballFile(id string) string { return id[len("sha256:"):] + ".tar" }

func TestLoadImage(t *testing.T) {
	s := setupImages(t, 0)
	ctx := context.Background()
	data := ociImage(t, "shoal.test/web:1", "v1")

	img, err := load(ctx, s.client, data, 1000)
	if err != nil {
		t.Fatalf("LoadImage: %v", err)
	}
	id := digestOf(data)
	if img.GetId() != id || img.GetSize() != int64(len(data)) ||
		!slices.Equal(img.GetNames(), []string{"shoal.test/web:1"}) || !slices.Equal(img.GetHolders(), []string{"m1"}) {
		t.Errorf("loaded image = %v; want id %s, %d bytes, names [shoal.test/web:1], holders [m1]", img, id, len(data))
	}
	if img.GetMeta().GetVersion() == 0 || img.GetMeta().GetCreatedAt() == nil {
		t.Errorf("the answer is not the stored image: meta %v", img.GetMeta())
	}
	if got := s.files(t); !slices.Equal(got, []string{tarballFile(id)}) {
		t.Errorf("image directory holds %q, want the tarball alone", got)
	}
	kept, err := os.ReadFile(filepath.Join(s.dir, tarballFile(id)))
	if err != nil || !bytes.Equal(kept, data) {
		t.Errorf("kept tarball differs from the upload (%v)", err)
	}

	// The same tarball again changes nothing.
	again, err := load(ctx, s.client, data, 1<<20)
	if err != nil {
		t.Fatalf("second LoadImage: %v", err)
	}
	if again.GetMeta().GetVersion() != img.GetMeta().GetVersion() {
		t.Errorf("loading the same tarball again rewrote the image: version %d, then %d", img.GetMeta().GetVersion(), again.GetMeta().GetVersion())
	}
	list, err := s.client.ListImages(ctx, &api.ListImagesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetImages()) != 1 || list.GetImages()[0].GetId() != id {
		t.Errorf("ListImages = %v, want the one image", list.GetImages())
	}
}

// TestLoadImageMovesNames loads a new build under an existing name: the
// name moves to it, as a tag does in Docker, and an image left without
// names is dropped; one that keeps a name stays.
func TestLoadImageMovesNames(t *testing.T) {
	s := setupImages(t, 0)
	ctx := context.Background()
	v1 := ociImage(t, "shoal.test/web:latest", "v1")
	if _, err := load(ctx, s.client, v1, 4096); err != nil {
		t.Fatal(err)
	}
	// An image recorded with two names, one of which the next load takes.
	twoNames := &api.Image{Id: digestOf([]byte("other")), Names: []string{"shoal.test/api:latest", "shoal.test/keep:1"}, Holders: []string{"m1"}}
	propose(t, s.raft, store.Create(twoNames))

	v2 := ociImage(t, "shoal.test/web:latest", "v2")
	img, err := load(ctx, s.client, v2, 4096)
	if err != nil {
		t.Fatal(err)
	}
	api3 := ociImage(t, "shoal.test/api:latest", "api")
	if _, err := load(ctx, s.client, api3, 4096); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for _, i := range s.images() {
		got[i.GetId()] = i.GetNames()
	}
	want := map[string][]string{
		img.GetId():      {"shoal.test/web:latest"},
		digestOf(api3):   {"shoal.test/api:latest"},
		twoNames.GetId(): {"shoal.test/keep:1"},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("images after the loads = %v, want %v (v1 %s dropped)", got, want, digestOf(v1))
	}
}

func TestLoadImageRefused(t *testing.T) {
	random := make([]byte, 3000)
	rand.Read(random)
	tests := []struct {
		name    string
		data    []byte
		max     int64
		code    codes.Code
		mention string
	}{
		{name: "too large", data: ociImage(t, "shoal.test/big:1", "big"), max: 1000, code: codes.InvalidArgument, mention: "larger than the limit of 1000 bytes"},
		{name: "not a tarball", data: random, code: codes.InvalidArgument, mention: "not an image tarball"},
		{name: "a tarball of something else", data: tarOf(t, "README", "hello"), code: codes.InvalidArgument, mention: "neither an oci-layout"},
		{name: "truncated", data: ociImage(t, "shoal.test/cut:1", "cut")[:2000], code: codes.InvalidArgument, mention: "not an image tarball"},
		{name: "nothing", data: nil, code: codes.InvalidArgument, mention: "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := setupImages(t, tt.max)
			_, err := load(context.Background(), s.client, tt.data, 512)
			wantCode(t, err, tt.code, tt.mention)
			if imgs := s.images(); len(imgs) != 0 {
				t.Errorf("a refused load recorded %v", imgs)
			}
			if f := s.files(t); len(f) != 0 {
				t.Errorf("a refused load left %q", f)
			}
		})
	}
}

func tarOf(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestLoadImageCancelled cancels an upload halfway: the partial tarball
// is removed and nothing is recorded.
func TestLoadImageCancelled(t *testing.T) {
	s := setupImages(t, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := s.client.LoadImage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := ociImage(t, "shoal.test/web:1", "v1")
	if err := stream.Send(&api.LoadImageRequest{Data: data[:len(data)/2]}); err != nil {
		t.Fatal(err)
	}
	await.For(t, "the upload's temporary file", func() bool { return len(s.files(t)) == 1 })
	cancel()
	await.For(t, "the temporary file to go", func() bool { return len(s.files(t)) == 0 })
	if imgs := s.images(); len(imgs) != 0 {
		t.Errorf("a cancelled load recorded %v", imgs)
	}
}

func TestLoadImageWithoutStore(t *testing.T) {
	c := serveControl(t, newServer(t, newRaft(t)))
	_, err := load(context.Background(), c, ociImage(t, "shoal.test/web:1", "v1"), 1024)
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("LoadImage on a server without an image store: %v, want Unimplemented", err)
	}
}
