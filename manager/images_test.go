package manager

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testgrpc"
	"github.com/shoal-project/shoal/manager/store"
)

// peerManager is another manager's Dispatcher, reduced to FetchImage.
type peerManager struct {
	api.UnimplementedDispatcherServer
	mu       sync.Mutex
	tarballs map[string][]byte // what it sends for each id
}

func (p *peerManager) set(id string, b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tarballs[id] = b
}

func (p *peerManager) FetchImage(req *api.FetchImageRequest, stream api.Dispatcher_FetchImageServer) error {
	p.mu.Lock()
	b, ok := p.tarballs[req.GetId()]
	p.mu.Unlock()
	if !ok {
		return status.Error(codes.NotFound, "not here")
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

// servePeer serves p and returns a Dialer that reaches it at addr only.
func servePeer(t *testing.T, p *peerManager, addr string) Dialer {
	t.Helper()
	conn := testgrpc.Serve(t, func(srv *grpc.Server) { api.RegisterDispatcherServer(srv, p) })
	return func(ctx context.Context, to string) (grpc.ClientConnInterface, error) {
		if to != addr {
			return nil, fmt.Errorf("no manager at %s", to)
		}
		return conn, nil
	}
}

func randomTarball(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, "sha256:" + hex.EncodeToString(sum[:])
}

func storedImage(m *Manager, id string) *api.Image {
	var img *api.Image
	m.State().Store().View(func(tx store.ReadTx) { img = tx.Image(id) })
	return img
}

func tarballPath(m *Manager, id string) string {
	return filepath.Join(ImageDir(m.cfg.DataDir), id[len("sha256:"):]+".tar")
}

// TestImageReplication records images other managers hold: this manager
// copies each, checks its digest, records itself as a holder (the leader
// also drops holders that are no longer managers), and retries a copy
// that failed.
func TestImageReplication(t *testing.T) {
	peer := &peerManager{tarballs: map[string][]byte{}}
	cfg := testConfig(t.TempDir())
	cfg.Dial = servePeer(t, peer, "10.0.0.2:4242")
	m := startManagerWith(t, cfg, Ingress{})
	ctx := context.Background()
	if err := m.State().Propose(ctx,
		store.Create(&api.Node{Id: "m2", Role: api.NodeRole_NODE_ROLE_MANAGER, ManagerStatus: &api.ManagerStatus{RaftAddr: "10.0.0.2:4242"}}),
		store.Create(&api.Node{Id: "m3", Role: api.NodeRole_NODE_ROLE_MANAGER}), // no address known
	); err != nil {
		t.Fatal(err)
	}

	good, goodID := randomTarball(t, 5000)
	peer.set(goodID, good)
	bad, badID := randomTarball(t, 3000)
	peer.set(badID, bad[:2000]) // the peer sends something else at first
	if err := m.State().Propose(ctx,
		store.Create(&api.Image{Id: goodID, Names: []string{"web:1"}, Size: int64(len(good)), Holders: []string{"m3", "gone", "m2"}}),
		store.Create(&api.Image{Id: badID, Names: []string{"api:1"}, Size: int64(len(bad)), Holders: []string{"m2"}}),
	); err != nil {
		t.Fatal(err)
	}

	await.For(t, "the good image copied and recorded", func() (bool, string) {
		img := storedImage(m, goodID)
		return slices.Equal(img.GetHolders(), []string{"m3", "m2", selfID}), fmt.Sprintf("holders %v", img.GetHolders())
	})
	if b, err := os.ReadFile(tarballPath(m, goodID)); err != nil || string(b) != string(good) {
		t.Errorf("the copied tarball differs (%v)", err)
	}
	if img := storedImage(m, badID); slices.Contains(img.GetHolders(), selfID) {
		t.Fatalf("recorded as holder of a tarball whose copy had the wrong digest: %v", img.GetHolders())
	}
	if _, err := os.Stat(tarballPath(m, badID)); !os.IsNotExist(err) {
		t.Errorf("a copy with the wrong digest was kept: %v", err)
	}
	// Retries of the bad copy come and go (an upload in progress is a
	// temporary file); between them only the good tarball is there.
	await.For(t, "only the good tarball in the image directory", func() (bool, string) {
		entries, _ := os.ReadDir(ImageDir(m.cfg.DataDir))
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return len(entries) == 1, fmt.Sprintf("files %v", names)
	})

	peer.set(badID, bad) // fixed: the retry gets it
	await.For(t, "the second image copied after a retry", func() (bool, string) {
		img := storedImage(m, badID)
		return slices.Contains(img.GetHolders(), selfID), fmt.Sprintf("holders %v", img.GetHolders())
	})
	if b, err := os.ReadFile(tarballPath(m, badID)); err != nil || string(b) != string(bad) {
		t.Errorf("the retried copy differs (%v)", err)
	}
}

// TestImageCollect removes tarballs no image records once they are older
// than the grace, and keeps the rest.
func TestImageCollect(t *testing.T) {
	m := startManager(t)
	dir := ImageDir(m.cfg.DataDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	_, recorded := randomTarball(t, 10)
	_, orphan := randomTarball(t, 10)
	_, fresh := randomTarball(t, 10)
	if err := m.State().Propose(context.Background(), store.Create(&api.Image{Id: recorded, Names: []string{"web:1"}, Holders: []string{selfID}})); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * collectGrace)
	for _, id := range []string{recorded, orphan, fresh} {
		if err := os.WriteFile(tarballPath(m, id), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if id != fresh {
			if err := os.Chtimes(tarballPath(m, id), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	m.images.collect()
	for id, want := range map[string]bool{recorded: true, orphan: false, fresh: true} {
		_, err := os.Stat(tarballPath(m, id))
		if got := err == nil; got != want {
			t.Errorf("tarball %s kept = %v, want %v", id, got, want)
		}
	}
}
