package manager

import "google.golang.org/grpc"

// Limits of the cluster port, set on purpose rather than left to gRPC's
// defaults (which bound what a server receives by 4 MiB but what it sends
// and how many streams a connection opens not at all).
const (
	// MaxRecvMsg is the largest message a manager takes: the largest any
	// caller sends is an image tarball chunk (1 MiB) or a forwarded batch
	// of proposals, far below it. A node's status report is cut far below
	// it by the dispatcher; a larger message is refused by gRPC with
	// ResourceExhausted before it is read whole.
	MaxRecvMsg = 4 << 20
	// MaxSendMsg is the largest message a manager sends: a bound on what
	// one answer may cost to build and hold, not a size clients are
	// expected to take (gRPC clients take 4 MiB by default). The
	// dispatcher sends assignments in parts of 1 MiB (ASSIGNMENT_TYPE_PART)
	// so that workers never need more than their default.
	MaxSendMsg = 64 << 20
	// MaxStreamsPerConn bounds the calls one connection has open at once:
	// a worker keeps three streams and a few calls, a follower forwards
	// the control calls of its clients. Beyond it a client waits for one
	// to end.
	MaxStreamsPerConn = 1024
)

// ServerOptions are the gRPC server options of the cluster port.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxRecvMsg),
		grpc.MaxSendMsgSize(MaxSendMsg),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
	}
}
