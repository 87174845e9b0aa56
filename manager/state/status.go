package state

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
)

// ToStatus is how every manager API answers the errors of writing through
// raft and reading the store: with the gRPC code that tells the caller
// what to do (fix the request, read again and retry, try the leader). A
// spec that failed validation (api.SpecError) is InvalidArgument. An error
// that already carries a status passes unchanged; nil stays nil.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var se *api.SpecError
	switch {
	case errors.As(err, &se):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrExist):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrSequenceConflict):
		return status.Error(codes.Aborted, err.Error()+"; read the object again and retry")
	case errors.Is(err, ErrDiskFull):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, ErrNotLeader):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	return status.Error(codes.Internal, err.Error())
}
