package ctl

import (
	"context"
	"io"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// lockControl records the autolock calls.
type lockControl struct {
	*fakeControl
	autolock []*api.SetAutolockRequest
	keys     []*api.GetUnlockKeyRequest
}

const testUnlockKey = "SHOALKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"

func (l *lockControl) SetAutolock(_ context.Context, req *api.SetAutolockRequest, _ ...grpc.CallOption) (*api.SetAutolockResponse, error) {
	l.autolock = append(l.autolock, req)
	if !req.GetAutolock() {
		return &api.SetAutolockResponse{}, nil
	}
	return &api.SetAutolockResponse{UnlockKey: testUnlockKey}, nil
}

func (l *lockControl) GetUnlockKey(_ context.Context, req *api.GetUnlockKeyRequest, _ ...grpc.CallOption) (*api.GetUnlockKeyResponse, error) {
	l.keys = append(l.keys, req)
	return &api.GetUnlockKeyResponse{UnlockKey: testUnlockKey}, nil
}

func TestAutolockCommands(t *testing.T) {
	f := newFixture()
	l := &lockControl{fakeControl: f}
	env := testEnv(f)
	env.connect = func(context.Context, targets) (api.ControlClient, io.Closer, error) { return l, nopCloser{}, nil }
	out, _, err := runIO(t, env, strings.NewReader(""), "cluster", "update", "--autolock")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, testUnlockKey) || !strings.Contains(out, "shoald unlock") {
		t.Errorf("update --autolock printed:\n%s", out)
	}
	if _, _, err := runIO(t, env, strings.NewReader(""), "cluster", "update", "--autolock=false"); err != nil {
		t.Fatal(err)
	}
	want := []*api.SetAutolockRequest{{Autolock: true}, {Autolock: false}}
	if len(l.autolock) != 2 || !proto.Equal(l.autolock[0], want[0]) || !proto.Equal(l.autolock[1], want[1]) {
		t.Errorf("SetAutolock requests = %v", l.autolock)
	}
	if _, _, err := runIO(t, env, strings.NewReader(""), "cluster", "update"); err == nil || !strings.Contains(ErrorMessage(err), "--autolock") {
		t.Errorf("update without a flag: %v", err)
	}

	out, errOut, err := runIO(t, env, strings.NewReader(""), "cluster", "unlock-key", "--rotate", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if out != testUnlockKey+"\n" || !strings.Contains(errOut, "Rotated") {
		t.Errorf("unlock-key --rotate -q: stdout %q, stderr %q", out, errOut)
	}
	if len(l.keys) != 1 || !l.keys[0].GetRotate() {
		t.Errorf("GetUnlockKey requests = %v", l.keys)
	}
}
