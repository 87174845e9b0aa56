package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// target says where shoald's Control API is. Only the local unix socket
// exists today. Remote managers (--host ADDR, mutual TLS over TCP with a
// client certificate) become a second kind of target here: cli.target
// picks it from the flags and dialTarget chooses the transport credentials
// for it; no command changes.
type target struct {
	socket string
}

func (t target) String() string { return t.socket }

// dialTarget makes a client for t. grpc.NewClient does not connect, so the
// socket is checked first: a missing socket is by far the most common
// failure and deserves a precise message rather than a transport error on
// the first RPC.
func dialTarget(_ context.Context, t target) (api.ControlClient, io.Closer, error) {
	path, err := filepath.Abs(t.socket)
	if err != nil {
		return nil, nil, fmt.Errorf("socket path %q: %w", t.socket, err)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, nil, unreachable(t, err)
	}
	// Plain gRPC over the unix socket: the socket is 0600 and owned by
	// root, so the kernel has already authenticated the caller.
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return reachError(t, invoker(ctx, method, req, reply, cc, opts...))
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, reachError(t, err)
			}
			return reachStream{ClientStream: s, target: t}, nil
		}),
	)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to shoald at %s: %w", t, err)
	}
	return api.NewControlClient(conn), conn, nil
}

// errNotRunning is the answer when nothing listens at the socket.
func errNotRunning(t target) error {
	return fmt.Errorf("cannot reach shoald at %s: is it running? (start it with `shoald init` or `shoald run`)", t)
}

// unreachable explains why the socket could not be opened.
func unreachable(t target, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errNotRunning(t)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("cannot reach shoald at %s: permission denied (the socket is root's only: run shoalctl as root)", t)
	}
	return fmt.Errorf("cannot reach shoald at %s: %w", t, err)
}

// reachError turns a transport failure into a message about the daemon.
// Only transport failures: the managers also answer Unavailable themselves
// (no leader yet), and those messages pass unchanged like every other error.
func reachError(t target, err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return err
	}
	msg := st.Message()
	switch {
	// A stale socket file with nobody listening, or one removed between
	// the check and the dial.
	case strings.Contains(msg, "connection refused"), strings.Contains(msg, "no such file"):
		return errNotRunning(t)
	case strings.Contains(msg, "permission denied"):
		return unreachable(t, fs.ErrPermission)
	case strings.HasPrefix(msg, "connection error"), strings.Contains(msg, "error reading from server"),
		strings.Contains(msg, "transport is closing"), strings.Contains(msg, "connection closed"):
		return fmt.Errorf("cannot reach shoald at %s: %s", t, msg)
	}
	return err
}

// reachStream applies reachError to messages of a server stream, where a
// daemon that goes away mid-watch shows up.
type reachStream struct {
	grpc.ClientStream
	target target
}

func (s reachStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return reachError(s.target, err)
}
