package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

func TestErrorMessage(t *testing.T) {
	notFound := status.Error(codes.NotFound, `service "web": not found`)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"grpc status", notFound, `service "web": not found`},
		{"wrapped grpc status keeps context", fmt.Errorf("watch tasks of service web: %w", notFound), `watch tasks of service web: service "web": not found`},
		{"joined", errors.Join(errors.New("first"), notFound), "first\n" + `service "web": not found`},
		{"plain", errors.New("plain"), "plain"},
		{"nil", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ErrorMessage(tt.err); got != tt.want {
				t.Errorf("ErrorMessage = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestSocketResolution(t *testing.T) {
	tests := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"default", "", nil, "/run/shoal/shoald.sock"},
		{"environment", "/tmp/env.sock", nil, "/tmp/env.sock"},
		{"flag beats environment", "/tmp/env.sock", []string{"--socket", "/tmp/flag.sock"}, "/tmp/flag.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture()
			e := testEnv(f)
			var got string
			e.connect = func(_ context.Context, ts targets) (api.ControlClient, io.Closer, error) {
				got = ts.String()
				return f, nopCloser{}, nil
			}
			e.getenv = func(k string) string {
				if k == socketEnv {
					return tt.env
				}
				return ""
			}
			if _, err := runWith(t, e, append(tt.args, "service", "ls", "-q")...); err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("dialled %q, want %q", got, tt.want)
			}
		})
	}
}

func TestHelpNeedsNoServer(t *testing.T) {
	for _, args := range [][]string{
		{"--help"},
		{"service", "create", "--help"},
		{"service"},
		{"node", "ls", "-h"},
		{"node", "update", "--help"},
		{"node", "promote", "--help"},
		{"cluster"},
		{"cluster", "join-token", "--help"},
		{"image"},
		{"image", "load", "-h"},
	} {
		f := newFixture()
		out, err := runCLI(t, f, args...)
		if err != nil {
			t.Errorf("shoalctl %v: %v", args, err)
		}
		if !strings.Contains(out, "Usage:") {
			t.Errorf("shoalctl %v printed no usage:\n%s", args, out)
		}
		if f.connects != 0 {
			t.Errorf("shoalctl %v connected to shoald", args)
		}
	}
}

// runReal runs shoalctl with the production env against the given socket.
func runReal(t *testing.T, socket string, args ...string) (string, error) {
	t.Helper()
	e := realEnv()
	e.isTerminal = func(io.Writer) bool { return false }
	e.now = func() time.Time { return fixedNow }
	return runWith(t, e, append([]string{"--socket", socket}, args...)...)
}

func TestDialMissingSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "shoald.sock")
	_, err := runReal(t, socket, "service", "ls")
	want := "cannot reach shoald at " + socket + ": is it running? (start it with `shoald init` or `shoald run`)"
	if got := ErrorMessage(err); got != want {
		t.Errorf("error = %q\nwant    %q", got, want)
	}
}

func TestDialStaleSocket(t *testing.T) {
	socket := staleSocket(t)
	_, err := runReal(t, socket, "node", "ls")
	want := "cannot reach shoald at " + socket + ": is it running? (start it with `shoald init` or `shoald run`)"
	if got := ErrorMessage(err); got != want {
		t.Errorf("error = %q\nwant    %q", got, want)
	}
}

// controlServer is a minimal Control server for exercising the real gRPC
// path: dialling, headers, status messages and a server stream.
type controlServer struct {
	api.UnimplementedControlServer
	fixture *fakeControl
}

func (s *controlServer) ListNodes(ctx context.Context, _ *api.ListNodesRequest) (*api.ListNodesResponse, error) {
	if err := grpc.SetHeader(ctx, metadata.Pairs(NodeIDHeader, nodeBravo)); err != nil {
		return nil, err
	}
	return &api.ListNodesResponse{Nodes: s.fixture.nodes}, nil
}

func (s *controlServer) GetService(_ context.Context, req *api.GetServiceRequest) (*api.GetServiceResponse, error) {
	return nil, status.Errorf(codes.NotFound, "service %q: not found", req.GetService())
}

func (s *controlServer) ListServices(context.Context, *api.ListServicesRequest) (*api.ListServicesResponse, error) {
	return nil, status.Error(codes.Unavailable, "no leader elected yet; retry in a few seconds")
}

func (s *controlServer) CreateService(_ context.Context, req *api.CreateServiceRequest) (*api.CreateServiceResponse, error) {
	svc := watchedService(1)
	svc.Spec = req.GetSpec()
	return &api.CreateServiceResponse{Service: svc}, nil
}

func (s *controlServer) WatchTasks(_ *api.WatchTasksRequest, stream grpc.ServerStreamingServer[api.WatchTasksResponse]) error {
	for _, state := range []api.TaskState{stNew, stRunning} {
		if err := stream.Send(snapshot(1, tk{slot: 1, state: state})); err != nil {
			return err
		}
	}
	<-stream.Context().Done()
	return nil
}

func TestAgainstGRPCServer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "shoald.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	api.RegisterControlServer(srv, &controlServer{fixture: newFixture()})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	t.Run("header marks the answering node", func(t *testing.T) {
		out, err := runReal(t, socket, "node", "ls")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "nodebravobbb *") || strings.Count(out, "*") != 1 {
			t.Errorf("want bravo marked, got:\n%s", out)
		}
	})
	t.Run("status message alone", func(t *testing.T) {
		_, err := runReal(t, socket, "service", "inspect", "nope")
		if got := ErrorMessage(err); got != `service "nope": not found` {
			t.Errorf("error = %q", got)
		}
	})
	t.Run("server's own Unavailable is not a dial failure", func(t *testing.T) {
		_, err := runReal(t, socket, "service", "ls")
		if got := ErrorMessage(err); got != "no leader elected yet; retry in a few seconds" {
			t.Errorf("error = %q", got)
		}
	})
	t.Run("create waits on the stream", func(t *testing.T) {
		out, err := runReal(t, socket, "service", "create", "--name", "web", "nginx")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(out, "service web converged\n") {
			t.Errorf("output:\n%s", out)
		}
	})
	t.Run("unimplemented", func(t *testing.T) {
		_, err := runReal(t, socket, "service", "rm", "web")
		if got := ErrorMessage(err); !strings.Contains(got, "RemoveService not implemented") {
			t.Errorf("error = %q", got)
		}
	})
}
