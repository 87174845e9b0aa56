package testcluster

import (
	"context"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoal-project/shoal/image"
)

type snapshotInfo = snapshots.Info

const snapshotActive = snapshots.KindActive

func protojsonUnmarshal(b []byte, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, m)
}

// RemoveNamespace deletes everything in a containerd namespace, then the
// namespace.
func RemoveNamespace(namespace string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return image.PurgeNamespace(ctx, ContainerdAddress, namespace)
}
