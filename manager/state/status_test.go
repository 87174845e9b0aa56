package state

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

func TestToStatus(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fmt.Errorf("service web: %w", store.ErrNotFound), codes.NotFound, "service web: not found"},
		{fmt.Errorf("service web: %w", store.ErrExist), codes.AlreadyExists, "service web: already exists"},
		{fmt.Errorf("record node n1: %w", store.ErrSequenceConflict), codes.Aborted, "record node n1: update out of sequence; read the object again and retry"},
		{fmt.Errorf("%w: no leader elected", ErrNotLeader), codes.Unavailable, "this manager is not the raft leader: no leader elected"},
		{fmt.Errorf("spec: %w", &api.SpecError{Field: "name", Msg: "empty"}), codes.InvalidArgument, "spec: name: empty"},
		{fmt.Errorf("%w (/var/lib/shoal/raft)", ErrDiskFull), codes.ResourceExhausted, "the raft data dir is full (/var/lib/shoal/raft)"},
		{context.DeadlineExceeded, codes.DeadlineExceeded, "context deadline exceeded"},
		{context.Canceled, codes.Canceled, "context canceled"},
		{status.Error(codes.FailedPrecondition, "kept as it is"), codes.FailedPrecondition, "kept as it is"},
		{errors.New("disk on fire"), codes.Internal, "disk on fire"},
	}
	for _, tt := range tests {
		got := status.Convert(ToStatus(tt.err))
		if got.Code() != tt.code || got.Message() != tt.msg {
			t.Errorf("ToStatus(%v) = %v %q, want %v %q", tt.err, got.Code(), got.Message(), tt.code, tt.msg)
		}
	}
	if err := ToStatus(nil); err != nil {
		t.Errorf("ToStatus(nil) = %v", err)
	}
}
