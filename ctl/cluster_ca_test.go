package ctl

import (
	"context"
	"io"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// caControl answers the calls of `cluster ca`.
type caControl struct {
	*fakeControl
	cluster  *api.Cluster
	rotated  int
	nodeList []*api.Node
}

func (f *caControl) GetCluster(context.Context, *api.GetClusterRequest, ...grpc.CallOption) (*api.GetClusterResponse, error) {
	return &api.GetClusterResponse{Cluster: f.cluster}, nil
}

func (f *caControl) ListNodes(context.Context, *api.ListNodesRequest, ...grpc.CallOption) (*api.ListNodesResponse, error) {
	return &api.ListNodesResponse{Nodes: f.nodeList}, nil
}

func (f *caControl) RotateRootCA(context.Context, *api.RotateRootCARequest, ...grpc.CallOption) (*api.RotateRootCAResponse, error) {
	f.rotated++
	return &api.RotateRootCAResponse{Digest: "sha256:new"}, nil
}

func TestClusterCACommand(t *testing.T) {
	f := &caControl{fakeControl: &fakeControl{}, cluster: &api.Cluster{RootCa: &api.RootCA{Digest: "sha256:old"}}}
	e := testEnv(f.fakeControl)
	e.connect = func(context.Context, targets) (api.ControlClient, io.Closer, error) { return f, nopCloser{}, nil }

	out, err := runWith(t, e, "cluster", "ca")
	if want := "Root CA: sha256:old\nRotation: none\n"; err != nil || out != want {
		t.Errorf("ca: %q, %v; want %q", out, err, want)
	}
	out, err = runWith(t, e, "cluster", "ca", "--rotate")
	if err != nil || f.rotated != 1 || out != "Started rotating the root CA to sha256:new: the nodes renew their certificates now, and the old root is retired once all have (see `shoalctl cluster ca`).\n" {
		t.Errorf("ca --rotate: %q, %v (%d rotations)", out, err, f.rotated)
	}

	f.cluster.CaRotation = &api.RootRotation{NewRoot: &api.RootCA{Digest: "sha256:new"}, StartedAt: timestamppb.New(fixedNow)}
	f.nodeList = []*api.Node{
		{Id: "n1", Description: &api.NodeDescription{Hostname: "a"}, Certificate: &api.NodeCertificate{Issuer: "sha256:new"}},
		{Id: "n2", Description: &api.NodeDescription{Hostname: "b"}, Certificate: &api.NodeCertificate{Issuer: "sha256:old"}},
	}
	out, err = runWith(t, e, "cluster", "ca")
	want := "Root CA: sha256:old\nRotation: to sha256:new, started 2026-03-01T12:00:00Z: 1 of 2 nodes renewed\nWaiting for: b\n"
	if err != nil || out != want {
		t.Errorf("ca during a rotation:\n%s%v\nwant\n%s", out, err, want)
	}
}
