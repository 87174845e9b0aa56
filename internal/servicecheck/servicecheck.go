package servicecheck

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
	"github.com/shoal-project/shoal/internal/testcluster"
	"github.com/shoal-project/shoal/internal/testimage"
)

// Want is the state a service must reach.
type Want struct {
	Replicas int
	// NotOn are nodes that must run none of the service's tasks.
	NotOn []string
	// Unseen are nodes whose containers are not looked at: cut off or
	// without a running shoald, they cannot know what changed, and their
	// containers may run on.
	Unseen []string
}

// Converged reports whether a service has reached w: exactly w.Replicas
// running tasks (desired and current state running), one per slot, none
// on w.NotOn, each with a running container on its node, and no running
// container of the service on any node that is not a running task's.
// tasks are the service's tasks as `service ps` lists them, names maps
// node ids to node names, and containers holds the containers of every
// node that is looked at (not w.Unseen), by node name. It returns the
// running tasks by id, or why not.
func Converged(tasks []*api.Task, names map[string]string, containers map[string][]testcluster.Container, w Want) (map[string]*api.Task, string) {
	ours := map[string]bool{}
	running := map[string]*api.Task{}
	slots := map[uint64]string{}
	for _, task := range tasks {
		ours[task.GetId()] = true
		if task.GetDesiredState() != api.TaskState_TASK_STATE_RUNNING || task.GetStatus().GetState() != api.TaskState_TASK_STATE_RUNNING {
			continue
		}
		running[task.GetId()] = task
		if other, dup := slots[task.GetSlot()]; dup {
			return nil, fmt.Sprintf("slot %d has two running tasks, %s and %s", task.GetSlot(), other, task.GetId())
		}
		slots[task.GetSlot()] = task.GetId()
		if node := names[task.GetNodeId()]; slices.Contains(w.NotOn, node) {
			return nil, fmt.Sprintf("task %s runs on %s", task.GetId(), node)
		}
	}
	if len(running) != w.Replicas {
		return nil, fmt.Sprintf("%d running tasks, want %d", len(running), w.Replicas)
	}
	seen := 0
	for _, name := range slices.Sorted(maps.Keys(containers)) {
		if slices.Contains(w.Unseen, name) {
			continue
		}
		for _, ctr := range containers[name] {
			if !strings.EqualFold(ctr.Status, "running") || !ours[ctr.TaskID] {
				continue
			}
			task := running[ctr.TaskID]
			if task == nil {
				return nil, fmt.Sprintf("%s runs container %s of task %s, which is not a running task", name, ctr.ID, ctr.TaskID)
			}
			if names[task.GetNodeId()] != name {
				return nil, fmt.Sprintf("%s runs container %s of task %s, which is assigned to %s", name, ctr.ID, ctr.TaskID, names[task.GetNodeId()])
			}
			seen++
		}
	}
	if seen != w.Replicas {
		return nil, fmt.Sprintf("%d running containers for %d running tasks", seen, w.Replicas)
	}
	return running, ""
}

// DecodeLines decodes a shoalctl listing printed with --format json: one
// object a line.
func DecodeLines[M proto.Message](out string, newM func() M) ([]M, error) {
	var objs []M
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		m := newM()
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(line), m); err != nil {
			return nil, fmt.Errorf("decode %T: %w: %s", m, err, line)
		}
		objs = append(objs, m)
	}
	return objs, nil
}

// TaskNames are the names the echo server reports for tasks
// (SHOAL_TASK_NAME: service.slot.id), sorted.
func TaskNames(tasks map[string]*api.Task) []string {
	var out []string
	for _, task := range tasks {
		out = append(out, api.TaskName(task))
	}
	slices.Sort(out)
	return out
}

// ServedOnlyBy checks that all n requests of a load run succeeded and
// that the answers came from exactly the tasks named.
func ServedOnlyBy(t testing.TB, what string, rep testimage.LoadReport, n int, names []string) {
	t.Helper()
	if rep.OK != n || rep.Failed != 0 {
		t.Errorf("%s: %d of %d requests succeeded, %d failed: %v", what, rep.OK, n, rep.Failed, rep.Errors)
	}
	if got := slices.Sorted(maps.Keys(rep.Tasks)); !slices.Equal(got, names) {
		t.Errorf("%s: answered by %v (%v), want exactly the running tasks %v", what, got, rep.Tasks, names)
	}
}

// InTask runs the echo image's client mode (`/echo gets N URL`, `/echo
// resolve NAME`; see internal/testimage/echo) inside a task's container,
// with the task's interfaces and resolv.conf, and returns its output.
type InTask func(args ...string) (string, error)

// discoveryRequests is how many requests go to a service's VIP: both of
// two tasks answer unless the balancer is broken (a fair one misses one
// of two with probability 2^-29).
const discoveryRequests = 30

// Discovery checks, from inside a task on svc's only network (in), that
// svc's name resolves to its VIP (waiting up to settle: the resolver
// learns of the service with the network view), tasks.<name> to exactly
// the addresses of its running tasks, and that requests to http://<name>/
// reach every one of them.
func Discovery(t testing.TB, in InTask, svc *api.Service, running map[string]*api.Task, settle time.Duration) {
	t.Helper()
	name := svc.GetSpec().GetName()
	vips := svc.GetEndpoint().GetVips()
	if len(vips) != 1 {
		t.Fatalf("%s: want one VIP, got %v", name, vips)
	}
	vip, _, _ := strings.Cut(vips[0].GetAddr(), "/")
	var ips []string
	for _, task := range running {
		for _, a := range task.GetNetworks() {
			ip, _, _ := strings.Cut(a.GetAddr(), "/")
			ips = append(ips, ip)
		}
	}
	slices.Sort(ips)
	await.Within(t, settle, time.Second, "a task resolves "+name, func() (bool, string) {
		got, err := in("resolve", name)
		return err == nil && got == vip, fmt.Sprintf("resolve %s = %q (%v), want the VIP %s", name, got, err, vip)
	})
	if got, err := in("resolve", "tasks."+name); err != nil || got != strings.Join(ips, "\n") {
		t.Errorf("resolve tasks.%s = %q (%v), want %v", name, got, err, ips)
	}
	got, err := in("gets", strconv.Itoa(discoveryRequests), "http://"+name+"/")
	if err != nil {
		t.Fatalf("GET http://%s/ from a task: %v: %s", name, err, got)
	}
	seen := map[string]bool{}
	for line := range strings.SplitSeq(got, "\n") {
		if task, ok := strings.CutPrefix(line, "task="); ok {
			seen[task] = true
		}
	}
	if got, want := slices.Sorted(maps.Keys(seen)), TaskNames(running); !slices.Equal(got, want) {
		t.Errorf("a task reached %s's tasks %v through the VIP, want %v", name, got, want)
	}
}
