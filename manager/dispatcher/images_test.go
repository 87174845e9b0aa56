package dispatcher

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
	"github.com/shoal-project/shoal/manager/tarballs"
)

func managerNode(id, addr string) *api.Node {
	n := node(id)
	n.Role = api.NodeRole_NODE_ROLE_MANAGER
	if addr != "" {
		n.ManagerStatus = &api.ManagerStatus{RaftAddr: addr}
	}
	return n
}

func newImage(id string, names ...string) *api.Image {
	return &api.Image{Id: id, Names: names, Holders: []string{"m1"}}
}

// digest is a well-formed image id made from s.
func digest(s string) string { return "sha256:" + strings.Repeat(s, 64)[:64] }

func imageIDs(msg *api.ImagesMessage) []string {
	var ids []string
	for _, i := range msg.GetImages() {
		ids = append(ids, i.GetId()+" "+strings.Join(i.GetNames(), ","))
	}
	return ids
}

func TestImagesStream(t *testing.T) {
	r := newRaft(t)
	a, b := newImage(digest("a"), "web:1"), newImage(digest("b"), "api:1")
	propose(t, r, store.Create(node("n1")), store.Create(managerNode("m1", "10.0.0.1:4242")),
		store.Create(managerNode("m2", "")), store.Create(managerNode("m3", "10.0.0.3:4242")), store.Create(a))
	c := serve(t, New(r, Config{Logger: quietLogger()}))
	sid, _ := openSession(t, c, "n1", nil)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := c.Images(ctx, &api.ImagesRequest{SessionId: sid})
	if err != nil {
		t.Fatal(err)
	}
	md, err := stream.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := md.Get(ImageHoldersHeader), []string{"m1=10.0.0.1:4242", "m3=10.0.0.3:4242"}; !slices.Equal(got, want) {
		t.Errorf("holders header = %q, want %q", got, want)
	}
	next := func(what string, want ...string) {
		t.Helper()
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := imageIDs(msg); !slices.Equal(got, want) {
			t.Fatalf("%s: list = %q, want %q", what, got, want)
		}
	}
	next("first list", a.GetId()+" web:1")

	propose(t, r, store.Create(b))
	next("after a load", a.GetId()+" web:1", b.GetId()+" api:1")

	// A change to something else sends nothing: the next list is the one
	// after the next image change.
	propose(t, r, store.Create(task("t1", "n1", api.TaskState_TASK_STATE_ASSIGNED)))
	var cur *api.Image
	r.Store().View(func(tx store.ReadTx) { cur = tx.Image(a.GetId()) })
	upd := proto.Clone(cur).(*api.Image)
	upd.Names = []string{"web:1", "web:latest"}
	propose(t, r, store.Update(upd))
	next("after a rename", a.GetId()+" web:1,web:latest", b.GetId()+" api:1")

	propose(t, r, store.Remove(b))
	next("after a removal", a.GetId()+" web:1,web:latest")
}

func TestImagesRefused(t *testing.T) {
	r := newRaft(t)
	propose(t, r, store.Create(node("n1")))
	var following atomic.Bool
	c := serve(t, New(r, Config{Logger: quietLogger(), Leader: func() (bool, string) { return !following.Load(), "10.0.0.9:4242" }}))
	sid, _ := openSession(t, c, "n1", nil)
	recv := func(id string) error {
		s, err := c.Images(context.Background(), &api.ImagesRequest{SessionId: id})
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	if err := recv("nope"); status.Code(err) != codes.NotFound {
		t.Errorf("Images on an unknown session: %v, want NotFound", err)
	}
	following.Store(true)
	if err := recv(sid); status.Code(err) != codes.Unavailable {
		t.Errorf("Images on a follower: %v, want Unavailable", err)
	}
}

// keep puts content in d as a tarball and returns its id.
func keep(t *testing.T, d *tarballs.Dir, content []byte) string {
	t.Helper()
	sent := false
	in, err := d.Receive(func() ([]byte, error) {
		if sent {
			return nil, io.EOF
		}
		sent = true
		return content, nil
	}, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Keep(); err != nil {
		t.Fatal(err)
	}
	return in.ID
}

func TestFetchImage(t *testing.T) {
	r := newRaft(t)
	d, err := tarballs.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	content := make([]byte, 2*fetchChunk+fetchChunk/2)
	rand.Read(content)
	id := keep(t, d, content)
	missing := digest("c")
	propose(t, r, store.Create(newImage(id, "web:1")), store.Create(&api.Image{Id: missing, Names: []string{"api:1"}, Holders: []string{"m2", "m3"}}))
	// A follower serves tarballs too.
	c := serve(t, New(r, Config{Logger: quietLogger(), Tarballs: d, Leader: func() (bool, string) { return false, "elsewhere" }}))

	stream, err := c.FetchImage(context.Background(), &api.FetchImageRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	var (
		got   bytes.Buffer
		sizes []int
	)
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("fetch: %v", err)
		}
		sizes = append(sizes, len(chunk.GetData()))
		got.Write(chunk.GetData())
	}
	if !bytes.Equal(got.Bytes(), content) {
		t.Errorf("fetched %d bytes that differ from the %d kept", got.Len(), len(content))
	}
	if want := []int{fetchChunk, fetchChunk, fetchChunk / 2}; !slices.Equal(sizes, want) {
		t.Errorf("chunk sizes = %v, want %v", sizes, want)
	}

	tests := []struct {
		name    string
		d       *Dispatcher
		id      string
		code    codes.Code
		mention string
	}{
		{"not held here", New(r, Config{Logger: quietLogger(), Tarballs: d}), missing, codes.NotFound, "held by m2, m3"},
		{"not loaded", New(r, Config{Logger: quietLogger(), Tarballs: d}), digest("d"), codes.NotFound, "not loaded"},
		{"not a digest", New(r, Config{Logger: quietLogger(), Tarballs: d}), "sha256:../../etc/passwd", codes.InvalidArgument, "want an image digest"},
		{"no tarballs kept", New(r, Config{Logger: quietLogger()}), id, codes.NotFound, "keeps no image tarballs"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := serve(t, tt.d).FetchImage(context.Background(), &api.FetchImageRequest{Id: tt.id})
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.mention) {
				t.Errorf("FetchImage(%s) = %v, want %v mentioning %q", tt.id, err, tt.code, tt.mention)
			}
		})
	}
}
