package ctl

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// hangGuard bounds one shoalctl run in tests; generous for a noisy machine.
const hangGuard = time.Minute

// fixedNow is the clock of every test: ages in tables are relative to it.
var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fixedNow.Add(-d)) }

// fakeControl is an in-memory api.ControlClient. Methods a test does not
// expect are left to the nil embedded interface, so calling one panics and
// fails the test.
type fakeControl struct {
	api.ControlClient

	mu       sync.Mutex
	connects int
	calls    []string

	nodes    []*api.Node
	selfNode string
	// reserved is what GetNode says a node's tasks reserve, by node id.
	reserved map[string]*api.Resources
	services []*api.Service
	counts   map[string]*api.ServiceCounts
	tasks    []*api.Task

	// watch holds, per service id, the snapshots WatchTasks sends; after
	// the last one the stream blocks until the watcher goes away, unless
	// watchEnd is set.
	watch     map[string][]*api.WatchTasksResponse
	watchEnd  error
	createErr error
	// updateErrs are returned by successive UpdateService calls first.
	updateErrs []error

	created []*api.ServiceSpec
	updates []*api.UpdateServiceRequest
	removed []string

	images     []*api.Image
	joinTokens map[api.NodeRole]string
	managers   []string
	// updateNodeErrs are returned by successive UpdateNode calls first.
	updateNodeErrs []error
	// loadErr ends a LoadImage stream after loadErrAfter chunks: Send then
	// returns io.EOF and CloseAndRecv returns loadErr, as gRPC does.
	loadErr      error
	loadErrAfter int

	networks         []*api.Network
	networksCreated  []*api.NetworkSpec
	networksRemoved  []string
	createNetworkErr error

	nodeUpdates  []*api.UpdateNodeRequest
	nodesRemoved []*api.RemoveNodeRequest
	tokenReqs    []*api.GetJoinTokenRequest
	loads        []*fakeLoad
}

func (f *fakeControl) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeControl) lookup(ref string) (*api.Service, error) {
	var prefixed []*api.Service
	for _, s := range f.services {
		if s.GetId() == ref || s.GetSpec().GetName() == ref {
			return s, nil
		}
		if strings.HasPrefix(s.GetId(), ref) {
			prefixed = append(prefixed, s)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], nil
	}
	return nil, status.Errorf(codes.NotFound, "service %q: not found", ref)
}

func (f *fakeControl) ListNodes(_ context.Context, _ *api.ListNodesRequest, opts ...grpc.CallOption) (*api.ListNodesResponse, error) {
	f.record("ListNodes")
	for _, o := range opts {
		if h, ok := o.(grpc.HeaderCallOption); ok && f.selfNode != "" {
			*h.HeaderAddr = metadata.Pairs(NodeIDHeader, f.selfNode)
		}
	}
	return &api.ListNodesResponse{Nodes: f.nodes}, nil
}

func (f *fakeControl) lookupNode(ref string) (*api.Node, error) {
	var prefixed []*api.Node
	for _, n := range f.nodes {
		if n.GetId() == ref || n.GetDescription().GetHostname() == ref {
			return n, nil
		}
		if strings.HasPrefix(n.GetId(), ref) {
			prefixed = append(prefixed, n)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], nil
	}
	return nil, status.Errorf(codes.NotFound, "node %q: not found", ref)
}

func (f *fakeControl) GetNode(_ context.Context, req *api.GetNodeRequest, _ ...grpc.CallOption) (*api.GetNodeResponse, error) {
	f.record("GetNode")
	n, err := f.lookupNode(req.GetNode())
	if err != nil {
		return nil, err
	}
	return &api.GetNodeResponse{Node: proto.CloneOf(n), Reserved: f.reserved[n.GetId()]}, nil
}

// UpdateNode checks the version as the managers do, so a command that
// writes without the version it read fails.
func (f *fakeControl) UpdateNode(_ context.Context, req *api.UpdateNodeRequest, _ ...grpc.CallOption) (*api.UpdateNodeResponse, error) {
	f.record("UpdateNode")
	f.nodeUpdates = append(f.nodeUpdates, req)
	if len(f.updateNodeErrs) > 0 {
		err := f.updateNodeErrs[0]
		f.updateNodeErrs = f.updateNodeErrs[1:]
		return nil, err
	}
	// As the managers do: a spec is whole.
	if req.GetSpec().GetAvailability() == api.NodeAvailability_NODE_AVAILABILITY_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "availability: want active, pause or drain")
	}
	if req.GetSpec().GetDesiredRole() == api.NodeRole_NODE_ROLE_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "desired_role: want worker or manager")
	}
	n, err := f.lookupNode(req.GetNode())
	if err != nil {
		return nil, err
	}
	if v := req.GetVersion(); v != 0 && v != n.GetMeta().GetVersion() {
		return nil, status.Errorf(codes.Aborted, "node %s changed since version %d; read it again", n.GetId(), v)
	}
	n.Spec = req.GetSpec()
	n.Meta.Version++
	return &api.UpdateNodeResponse{Node: proto.CloneOf(n)}, nil
}

func (f *fakeControl) RemoveNode(_ context.Context, req *api.RemoveNodeRequest, _ ...grpc.CallOption) (*api.RemoveNodeResponse, error) {
	f.record("RemoveNode")
	n, err := f.lookupNode(req.GetNode())
	if err != nil {
		return nil, err
	}
	if n.GetStatus().GetState() != api.NodeState_NODE_STATE_DOWN && !req.GetForce() {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s is not down; remove it with --force", nodeName(n))
	}
	f.nodesRemoved = append(f.nodesRemoved, req)
	return &api.RemoveNodeResponse{}, nil
}

func (f *fakeControl) GetJoinToken(_ context.Context, req *api.GetJoinTokenRequest, _ ...grpc.CallOption) (*api.GetJoinTokenResponse, error) {
	f.record("GetJoinToken")
	f.tokenReqs = append(f.tokenReqs, req)
	token, ok := f.joinTokens[req.GetRole()]
	if !ok {
		return nil, status.Errorf(codes.InvalidArgument, "no join token for role %s", req.GetRole())
	}
	if req.GetRotate() {
		token += "-rotated"
		f.joinTokens[req.GetRole()] = token
	}
	return &api.GetJoinTokenResponse{Token: token, Managers: f.managers}, nil
}

func (f *fakeControl) ListImages(context.Context, *api.ListImagesRequest, ...grpc.CallOption) (*api.ListImagesResponse, error) {
	f.record("ListImages")
	return &api.ListImagesResponse{Images: f.images}, nil
}

func (f *fakeControl) LoadImage(ctx context.Context, _ ...grpc.CallOption) (grpc.ClientStreamingClient[api.LoadImageRequest, api.LoadImageResponse], error) {
	f.record("LoadImage")
	l := &fakeLoad{ctx: ctx, err: f.loadErr, errAfter: f.loadErrAfter}
	f.loads = append(f.loads, l)
	return l, nil
}

// fakeLoad is the client side of a LoadImage stream that keeps what it
// was sent.
type fakeLoad struct {
	grpc.ClientStream
	ctx      context.Context
	err      error
	errAfter int

	data   []byte
	chunks []int
	closed bool
}

func (l *fakeLoad) Send(m *api.LoadImageRequest) error {
	if l.closed {
		return errors.New("Send after CloseAndRecv")
	}
	if err := l.ctx.Err(); err != nil {
		return io.EOF
	}
	if l.err != nil && len(l.chunks) >= l.errAfter {
		return io.EOF
	}
	// gRPC marshals within Send, so the caller may reuse m's buffer: copy.
	l.data = append(l.data, m.GetData()...)
	l.chunks = append(l.chunks, len(m.GetData()))
	return nil
}

func (l *fakeLoad) CloseAndRecv() (*api.LoadImageResponse, error) {
	l.closed = true
	if l.err != nil {
		return nil, l.err
	}
	sum := sha256.Sum256(l.data)
	return &api.LoadImageResponse{Image: &api.Image{
		Id:      "sha256:" + hex.EncodeToString(sum[:]),
		Names:   []string{"docker.io/library/web:1.0", "docker.io/library/web:latest"},
		Size:    int64(len(l.data)),
		Holders: []string{nodeAlpha},
	}}, nil
}

func (f *fakeControl) CreateService(_ context.Context, req *api.CreateServiceRequest, _ ...grpc.CallOption) (*api.CreateServiceResponse, error) {
	f.record("CreateService")
	if f.createErr != nil {
		return nil, f.createErr
	}
	f.created = append(f.created, req.GetSpec())
	svc := &api.Service{
		Id:          "svcnewaaaaaaaaaaaaaaaaaaaa",
		Meta:        &api.Meta{Version: 20, CreatedAt: ago(0)},
		Spec:        req.GetSpec(),
		SpecVersion: 1,
	}
	f.services = append(f.services, svc)
	return &api.CreateServiceResponse{Service: svc}, nil
}

func (f *fakeControl) GetService(_ context.Context, req *api.GetServiceRequest, _ ...grpc.CallOption) (*api.GetServiceResponse, error) {
	f.record("GetService")
	svc, err := f.lookup(req.GetService())
	if err != nil {
		return nil, err
	}
	return &api.GetServiceResponse{Service: svc, Counts: f.counts[svc.GetId()]}, nil
}

func (f *fakeControl) ListServices(context.Context, *api.ListServicesRequest, ...grpc.CallOption) (*api.ListServicesResponse, error) {
	f.record("ListServices")
	return &api.ListServicesResponse{Services: f.services, Counts: f.counts}, nil
}

func (f *fakeControl) UpdateService(_ context.Context, req *api.UpdateServiceRequest, _ ...grpc.CallOption) (*api.UpdateServiceResponse, error) {
	f.record("UpdateService")
	f.updates = append(f.updates, req)
	if len(f.updateErrs) > 0 {
		err := f.updateErrs[0]
		f.updateErrs = f.updateErrs[1:]
		return nil, err
	}
	svc, err := f.lookup(req.GetService())
	if err != nil {
		return nil, err
	}
	upd := proto.CloneOf(svc)
	upd.Spec = req.GetSpec()
	upd.Meta.Version = svc.GetMeta().GetVersion() + 1
	upd.PreviousSpec, upd.PreviousSpecVersion = svc.GetSpec(), svc.GetSpecVersion()
	if !proto.Equal(svc.GetSpec().GetTask(), req.GetSpec().GetTask()) {
		// Roughly what the managers do: a new task template starts a
		// rolling update.
		upd.SpecVersion = upd.Meta.Version
		upd.UpdateStatus = &api.UpdateStatus{State: api.UpdateState_UPDATE_STATE_UPDATING, SpecVersion: upd.SpecVersion, Message: "update in progress"}
	}
	return &api.UpdateServiceResponse{Service: upd}, nil
}

func (f *fakeControl) RollbackService(_ context.Context, req *api.RollbackServiceRequest, _ ...grpc.CallOption) (*api.RollbackServiceResponse, error) {
	f.record("RollbackService")
	svc, err := f.lookup(req.GetService())
	if err != nil {
		return nil, err
	}
	if svc.GetPreviousSpec() == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "service %q has no previous spec to roll back to: it was never updated", svc.GetSpec().GetName())
	}
	upd := proto.CloneOf(svc)
	upd.Spec, upd.PreviousSpec = svc.GetPreviousSpec(), svc.GetSpec()
	upd.SpecVersion, upd.PreviousSpecVersion = svc.GetPreviousSpecVersion(), svc.GetSpecVersion()
	upd.Meta.Version = svc.GetMeta().GetVersion() + 1
	upd.UpdateStatus = &api.UpdateStatus{State: api.UpdateState_UPDATE_STATE_ROLLBACK_STARTED, SpecVersion: upd.SpecVersion, Message: "manually requested rollback"}
	return &api.RollbackServiceResponse{Service: upd}, nil
}

func (f *fakeControl) RemoveService(_ context.Context, req *api.RemoveServiceRequest, _ ...grpc.CallOption) (*api.RemoveServiceResponse, error) {
	f.record("RemoveService")
	svc, err := f.lookup(req.GetService())
	if err != nil {
		return nil, err
	}
	f.removed = append(f.removed, svc.GetSpec().GetName())
	return &api.RemoveServiceResponse{}, nil
}

func (f *fakeControl) lookupNetwork(ref string) (*api.Network, error) {
	var prefixed []*api.Network
	for _, n := range f.networks {
		if n.GetId() == ref || n.GetSpec().GetName() == ref {
			return n, nil
		}
		if strings.HasPrefix(n.GetId(), ref) {
			prefixed = append(prefixed, n)
		}
	}
	if len(prefixed) == 1 {
		return prefixed[0], nil
	}
	return nil, status.Errorf(codes.NotFound, "network %q: not found", ref)
}

func (f *fakeControl) CreateNetwork(_ context.Context, req *api.CreateNetworkRequest, _ ...grpc.CallOption) (*api.CreateNetworkResponse, error) {
	f.record("CreateNetwork")
	if f.createNetworkErr != nil {
		return nil, f.createNetworkErr
	}
	f.networksCreated = append(f.networksCreated, req.GetSpec())
	n := &api.Network{
		Id:      "netnewaaaaaaaaaaaaaaaaaaaa",
		Meta:    &api.Meta{Version: 50, CreatedAt: ago(0)},
		Spec:    req.GetSpec(),
		Subnet:  "10.10.5.0/24",
		Gateway: "10.10.5.1",
		Vni:     4100,
	}
	f.networks = append(f.networks, n)
	return &api.CreateNetworkResponse{Network: n}, nil
}

func (f *fakeControl) GetNetwork(_ context.Context, req *api.GetNetworkRequest, _ ...grpc.CallOption) (*api.GetNetworkResponse, error) {
	f.record("GetNetwork")
	n, err := f.lookupNetwork(req.GetNetwork())
	if err != nil {
		return nil, err
	}
	return &api.GetNetworkResponse{Network: n}, nil
}

func (f *fakeControl) ListNetworks(context.Context, *api.ListNetworksRequest, ...grpc.CallOption) (*api.ListNetworksResponse, error) {
	f.record("ListNetworks")
	return &api.ListNetworksResponse{Networks: f.networks}, nil
}

func (f *fakeControl) RemoveNetwork(_ context.Context, req *api.RemoveNetworkRequest, _ ...grpc.CallOption) (*api.RemoveNetworkResponse, error) {
	f.record("RemoveNetwork")
	n, err := f.lookupNetwork(req.GetNetwork())
	if err != nil {
		return nil, err
	}
	f.networksRemoved = append(f.networksRemoved, n.GetSpec().GetName())
	return &api.RemoveNetworkResponse{}, nil
}

func (f *fakeControl) ListTasks(_ context.Context, req *api.ListTasksRequest, _ ...grpc.CallOption) (*api.ListTasksResponse, error) {
	f.record("ListTasks")
	var svcID, nodeID string
	if req.GetService() != "" {
		svc, err := f.lookup(req.GetService())
		if err != nil {
			return nil, err
		}
		svcID = svc.GetId()
	}
	if req.GetNode() != "" {
		n, err := f.lookupNode(req.GetNode())
		if err != nil {
			return nil, err
		}
		nodeID = n.GetId()
	}
	var tasks []*api.Task
	for _, t := range f.tasks {
		if (svcID == "" || t.GetServiceId() == svcID) && (nodeID == "" || t.GetNodeId() == nodeID) {
			tasks = append(tasks, t)
		}
	}
	return &api.ListTasksResponse{Tasks: tasks}, nil
}

func (f *fakeControl) WatchTasks(ctx context.Context, req *api.WatchTasksRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[api.WatchTasksResponse], error) {
	f.record("WatchTasks")
	return &fakeWatch{ctx: ctx, msgs: f.watch[req.GetService()], end: f.watchEnd}, nil
}

// fakeWatch plays a script of WatchTasks snapshots.
type fakeWatch struct {
	grpc.ClientStream
	ctx  context.Context
	msgs []*api.WatchTasksResponse
	end  error
}

func (w *fakeWatch) Recv() (*api.WatchTasksResponse, error) {
	if len(w.msgs) > 0 {
		m := w.msgs[0]
		w.msgs = w.msgs[1:]
		return m, nil
	}
	if w.end != nil {
		return nil, w.end
	}
	<-w.ctx.Done()
	return nil, status.FromContextError(w.ctx.Err()).Err()
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// testEnv is an env whose daemon is f and whose clock is fixedNow.
func testEnv(f *fakeControl) env {
	return env{
		connect: func(context.Context, targets) (api.ControlClient, io.Closer, error) {
			f.mu.Lock()
			f.connects++
			f.mu.Unlock()
			return f, nopCloser{}, nil
		},
		now:        func() time.Time { return fixedNow },
		isTerminal: func(io.Writer) bool { return false },
		getenv:     func(string) string { return "" },
	}
}

// runCLI runs shoalctl with args against f and returns what it printed.
func runCLI(t *testing.T, f *fakeControl, args ...string) (string, error) {
	t.Helper()
	return runWith(t, testEnv(f), args...)
}

func runWith(t *testing.T, e env, args ...string) (string, error) {
	t.Helper()
	out, _, err := runIO(t, e, strings.NewReader(""), args...)
	return out, err
}

// runIO runs shoalctl with stdin and returns its standard output and
// standard error.
func runIO(t *testing.T, e env, stdin io.Reader, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCommand(e)
	var out, errOut bytes.Buffer
	root.SetIn(stdin)
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	// A bug that makes a command wait forever fails here rather than
	// hanging the whole test binary; no test relies on this deadline.
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

const (
	nodeAlpha   = "nodealphaaaaaaaaaaaaaaaaaa"
	nodeBravo   = "nodebravobbbbbbbbbbbbbbbbb"
	nodeCharlie = "nodecharlieccccccccccccccc"
	nodeGone    = "nodegonezzzzzzzzzzzzzzzzzz"
	svcWeb      = "svcwebaaaaaaaaaaaaaaaaaaaa"
	svcAPI      = "svcapibbbbbbbbbbbbbbbbbbbb"
)

// newFixture is a small cluster: three nodes, two services and their
// tasks, with history.
func newFixture() *fakeControl {
	node := func(id, host string, state api.NodeState, avail api.NodeAvailability, ms *api.ManagerStatus) *api.Node {
		role := api.NodeRole_NODE_ROLE_WORKER
		if ms != nil {
			role = api.NodeRole_NODE_ROLE_MANAGER
		}
		return &api.Node{
			Id:            id,
			Meta:          &api.Meta{Version: 3, CreatedAt: ago(48 * time.Hour)},
			Spec:          &api.NodeSpec{Availability: avail, DesiredRole: role},
			Description:   &api.NodeDescription{Hostname: host, Os: "linux", Arch: "amd64", Engine: "containerd 1.6.20"},
			Status:        &api.NodeStatus{State: state, Addr: "10.0.0.1"},
			Role:          role,
			ManagerStatus: ms,
		}
	}
	web := &api.Service{
		Id:   svcWeb,
		Meta: &api.Meta{Version: 10, CreatedAt: ago(time.Hour), UpdatedAt: ago(5 * time.Minute)},
		Spec: &api.ServiceSpec{
			Name:   "web",
			Labels: map[string]string{"tier": "front", "owner": "ops"},
			Task: &api.TaskSpec{
				Container: &api.ContainerSpec{
					Image:           "nginx:1.27",
					Args:            []string{"nginx", "-g", "daemon off;"},
					Env:             []string{"MODE=prod"},
					StopGracePeriod: durationpb.New(10 * time.Second),
				},
				Restart: &api.RestartPolicy{
					Condition: api.RestartCondition_RESTART_CONDITION_ON_FAILURE,
					Delay:     durationpb.New(5 * time.Second),
					MaxDelay:  durationpb.New(30 * time.Second),
				},
				Placement: &api.Placement{Constraints: []string{"node.labels.zone==eu"}},
			},
			Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 3}},
		},
		SpecVersion: 2,
	}
	apiSvc := &api.Service{
		Id:   svcAPI,
		Meta: &api.Meta{Version: 12, CreatedAt: ago(72 * time.Hour)},
		Spec: &api.ServiceSpec{
			Name: "api",
			Task: &api.TaskSpec{Container: &api.ContainerSpec{Image: "registry.local/api:v2"}},
			Mode: &api.ServiceSpec_Replicated{Replicated: &api.ReplicatedService{Replicas: 2}},
		},
		SpecVersion: 1,
	}
	task := func(id string, svc *api.Service, slot uint64, node string, desired, state api.TaskState, created, changed time.Duration, errText string) *api.Task {
		return &api.Task{
			Id:           id,
			Meta:         &api.Meta{Version: 30, CreatedAt: ago(created)},
			ServiceId:    svc.GetId(),
			ServiceName:  svc.GetSpec().GetName(),
			Slot:         slot,
			NodeId:       node,
			Spec:         svc.GetSpec().GetTask(),
			SpecVersion:  svc.GetSpecVersion(),
			DesiredState: desired,
			Status:       &api.TaskStatus{State: state, Timestamp: ago(changed), Err: errText},
		}
	}
	const (
		running   = api.TaskState_TASK_STATE_RUNNING
		shutdown  = api.TaskState_TASK_STATE_SHUTDOWN
		failed    = api.TaskState_TASK_STATE_FAILED
		preparing = api.TaskState_TASK_STATE_PREPARING
		pending   = api.TaskState_TASK_STATE_PENDING
	)
	return &fakeControl{
		nodes: []*api.Node{
			node(nodeCharlie, "charlie", api.NodeState_NODE_STATE_DOWN, api.NodeAvailability_NODE_AVAILABILITY_DRAIN, nil),
			node(nodeAlpha, "alpha", api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_ACTIVE, &api.ManagerStatus{RaftAddr: "10.0.0.1:4243", Leader: true, Reachable: true}),
			node(nodeBravo, "bravo", api.NodeState_NODE_STATE_READY, api.NodeAvailability_NODE_AVAILABILITY_PAUSE, &api.ManagerStatus{RaftAddr: "10.0.0.2:4243", Reachable: true}),
		},
		selfNode: nodeAlpha,
		managers: []string{"192.0.2.10:4242", "192.0.2.11:4242"},
		joinTokens: map[api.NodeRole]string{
			api.NodeRole_NODE_ROLE_WORKER:  "SHOAL-1-3q2p5ka7yrq1gpiqgvwh31rk7u-workersecretworkersecret",
			api.NodeRole_NODE_ROLE_MANAGER: "SHOAL-1-3q2p5ka7yrq1gpiqgvwh31rk7u-managersecretmanagersecr",
		},
		images: []*api.Image{
			{
				Id:      "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
				Meta:    &api.Meta{Version: 40, CreatedAt: ago(time.Hour)},
				Names:   []string{"registry.local/api:v2"},
				Size:    48_213_504,
				Holders: []string{nodeAlpha, nodeBravo},
			},
			{
				Id:      "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
				Meta:    &api.Meta{Version: 41, CreatedAt: ago(time.Minute)},
				Names:   []string{"nginx:1.27", "nginx:latest"},
				Size:    192_838_656,
				Holders: []string{nodeAlpha},
			},
			{
				Id:   "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
				Meta: &api.Meta{Version: 42, CreatedAt: ago(time.Second)},
				Size: 812,
			},
		},
		services: []*api.Service{web, apiSvc},
		counts: map[string]*api.ServiceCounts{
			svcWeb: {Desired: 3, Running: 2},
			svcAPI: {Desired: 2, Running: 1, Unallocated: 1},
		},
		tasks: []*api.Task{
			task("taskweb1oldaaaaaaaaaaaaaaa", web, 1, nodeBravo, shutdown, failed, 5*time.Minute, 2*time.Minute,
				"task: non-zero exit (1): could not open /etc/app.conf: no such file or directory"),
			task("taskweb1newaaaaaaaaaaaaaaa", web, 1, nodeAlpha, running, running, 2*time.Minute, 3*time.Second, ""),
			task("taskweb2aaaaaaaaaaaaaaaaaa", web, 2, nodeBravo, running, running, time.Hour, 59*time.Minute, ""),
			task("taskweb3aaaaaaaaaaaaaaaaaa", web, 3, nodeGone, running, preparing, time.Second, 500*time.Millisecond, ""),
			task("taskapi1aaaaaaaaaaaaaaaaaa", apiSvc, 1, nodeAlpha, running, running, 72*time.Hour, 71*time.Hour, ""),
			task("taskapi2aaaaaaaaaaaaaaaaaa", apiSvc, 2, "", running, pending, 2*time.Second, 2*time.Second, ""),
		},
	}
}
