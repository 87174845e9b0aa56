package dispatcher

import (
	"fmt"
	"maps"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/manager/store"
	"google.golang.org/protobuf/proto"
)

// BenchmarkViewOf measures computing one node's whole network view in a
// cluster of 100 nodes and 1,000 published services of 10 running tasks
// each on the ingress network: what a stream does for a FULL message, a
// change of the networks, or a change of its node's own set of networks.
// Every other change takes the incremental path (BenchmarkViewUpdate).
func BenchmarkViewOf(b *testing.B) {
	s := benchViewStore(b)
	var v netView
	b.ResetTimer()
	for b.Loop() {
		s.View(func(tx store.ReadTx) { v = viewOf(tx, "node007") })
	}
	b.StopTimer()
	if len(v.endpoints) != 10000 || len(v.services) != 1000 || len(v.peers) != 100 {
		b.Fatalf("view has %d endpoints, %d services, %d peers; want 10000, 1000, 100", len(v.endpoints), len(v.services), len(v.peers))
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/view")
}

// BenchmarkViewUpdate measures what a stream does in the same cluster
// when one task of another node stops serving: the delta of its view,
// reading only the changed task.
func BenchmarkViewUpdate(b *testing.B) {
	s := benchViewStore(b)
	var v netView
	s.View(func(tx store.ReadTx) { v = viewOf(tx, "node007") })
	c := newNetChanges()
	c.tasks["svc0500-3"] = true
	var d *api.NetworkDelta
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		// Alternate the sent copy so every round has a change to send.
		v.endpoints["svc0500-3"] = &api.NetworkEndpoint{TaskId: "svc0500-3", Serving: i%2 == 0}
		s.View(func(tx store.ReadTx) { d = v.update(tx, "node007", c) })
	}
	b.StopTimer()
	if len(d.GetEndpoints()) != 1 || !d.GetEndpoints()[0].GetServing() {
		b.Fatalf("delta %v: want the one endpoint, serving", d)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/1000/float64(b.N), "us/update")
}

// benchViewStore holds 100 nodes and 1,000 published services of 10
// running tasks each on ingress.
func benchViewStore(b *testing.B) *store.Store {
	s := store.New()
	actions := []*api.StoreAction{store.Create(overlay("ingress", "10.0.0.0/16", true))}
	for n := range 100 {
		nd := node(fmt.Sprintf("node%03d", n))
		nd.Description = &api.NodeDescription{DataAddr: fmt.Sprintf("192.0.2.%d", n+1)}
		nd.Ingress = on("ingress", fmt.Sprintf("10.0.255.%d/16", n+1))
		actions = append(actions, store.Create(nd))
	}
	for sv := range 1000 {
		id := fmt.Sprintf("svc%04d", sv)
		actions = append(actions, store.Create(service(id, &api.Endpoint{
			Ports:    []*api.PortConfig{{Protocol: "tcp", Target: 80, Published: uint32(30000 + sv), Mode: "ingress"}},
			Vips:     []*api.EndpointVIP{{NetworkId: "ingress", Addr: fmt.Sprintf("10.1.%d.%d/16", sv/250, sv%250+1)}},
			Networks: []string{"ingress"},
		})))
		for i := range 10 {
			k := sv*10 + i
			t := attachedTask(fmt.Sprintf("%s-%d", id, i), id, fmt.Sprintf("node%03d", k%100), api.TaskState_TASK_STATE_RUNNING,
				on("ingress", fmt.Sprintf("10.0.%d.%d/16", k/250, k%250+1)))
			t.DesiredState = api.TaskState_TASK_STATE_RUNNING
			actions = append(actions, store.Create(t))
		}
	}
	if err := s.Apply(1, &api.Command{Actions: actions}); err != nil {
		b.Fatal(err)
	}
	return s
}

// TestViewUpdateMatchesFullView checks the incremental path against the
// whole computation: after each change, the view a stream keeps by
// update equals viewOf of the store, and the delta turns the old view into
// it.
func TestViewUpdateMatchesFullView(t *testing.T) {
	s := store.New()
	idx := uint64(1)
	apply := func(actions ...*api.StoreAction) {
		t.Helper()
		idx++
		if err := s.Apply(idx, &api.Command{Actions: actions}); err != nil {
			t.Fatal(err)
		}
	}
	running := func(id, svc, nodeID string, ats ...*api.NetworkAttachment) *api.Task {
		tk := attachedTask(id, svc, nodeID, api.TaskState_TASK_STATE_RUNNING, ats...)
		tk.DesiredState = api.TaskState_TASK_STATE_RUNNING
		return tk
	}
	n1, n2 := node("n1"), node("n2")
	n1.Description = &api.NodeDescription{DataAddr: "192.0.2.1"}
	n2.Description = &api.NodeDescription{DataAddr: "192.0.2.2"}
	apply(store.Create(overlay("ingress", "10.0.0.0/24", true)), store.Create(overlay("apps", "10.1.0.0/24", false)),
		store.Create(n1), store.Create(n2),
		store.Create(service("web", &api.Endpoint{Ports: []*api.PortConfig{{Target: 80, Published: 8080}}, Networks: []string{"ingress"}})),
		store.Create(service("db", &api.Endpoint{Vips: []*api.EndpointVIP{{NetworkId: "apps", Addr: "10.1.0.2/24"}}, Networks: []string{"apps"}})),
		store.Create(running("w1", "web", "n2", on("ingress", "10.0.0.5/24"))),
		store.Create(running("d1", "db", "n2", on("apps", "10.1.0.5/24"))))
	sub := s.Subscribe()
	defer sub.Close()
	var sent netView
	s.View(func(tx store.ReadTx) { sent = viewOf(tx, "n1") })

	get := func(id string) *api.Task {
		var tk *api.Task
		s.View(func(tx store.ReadTx) { tk = proto.Clone(tx.Task(id)).(*api.Task) })
		return tk
	}
	steps := []struct {
		name   string
		change func()
	}{
		{"a task of another node stops serving", func() { tk := get("w1"); tk.DesiredState = api.TaskState_TASK_STATE_SHUTDOWN; apply(store.Update(tk)) }},
		{"a new task on ingress elsewhere", func() { apply(store.Create(running("w2", "web", "n2", on("ingress", "10.0.0.6/24")))) }},
		{"a task of this node on a network new to it", func() { apply(store.Create(running("d2", "db", "n1", on("apps", "10.1.0.6/24")))) }},
		{"a peer changes its data address", func() {
			var nd *api.Node
			s.View(func(tx store.ReadTx) { nd = proto.Clone(tx.Node("n2")).(*api.Node) })
			nd.Description.DataAddr = "192.0.2.22"
			apply(store.Update(nd))
		}},
		{"a peer changes its WireGuard key", func() {
			var nd *api.Node
			s.View(func(tx store.ReadTx) { nd = proto.Clone(tx.Node("n2")).(*api.Node) })
			nd.Description.WireguardKey = wgKey(0xcc)
			apply(store.Update(nd))
		}},
		{"a service loses its ports", func() {
			var svc *api.Service
			s.View(func(tx store.ReadTx) { svc = proto.Clone(tx.Service("web")).(*api.Service) })
			svc.Endpoint = nil
			apply(store.Update(svc))
		}},
		{"a task is removed", func() { apply(store.Remove(get("w2"))) }},
		{"this node's last task on a network ends", func() {
			tk := get("d2")
			tk.Status.State = api.TaskState_TASK_STATE_SHUTDOWN
			apply(store.Update(tk))
		}},
	}
	for _, step := range steps {
		step.change()
		c := newNetChanges()
		for _, ch := range sub.Next() {
			for _, ev := range ch.Events {
				c.note(ev, "n1")
			}
		}
		if c.empty() {
			t.Fatalf("%s: no change noted", step.name)
		}
		old := netView{networks: maps.Clone(sent.networks), peers: maps.Clone(sent.peers), endpoints: maps.Clone(sent.endpoints), services: maps.Clone(sent.services)}
		var d *api.NetworkDelta
		var want netView
		s.View(func(tx store.ReadTx) {
			d = sent.update(tx, "n1", c)
			want = viewOf(tx, "n1")
		})
		if got, wantD := summary(d), summary(want.delta(old)); got != wantD {
			t.Errorf("%s: delta %s, want %s", step.name, got, wantD)
		}
		if summary(sent.delta(want)) != summary(&api.NetworkDelta{}) || summary(want.delta(sent)) != summary(&api.NetworkDelta{}) {
			t.Errorf("%s: kept view differs from the whole view: %s / %s", step.name, summary(sent.delta(want)), summary(want.delta(sent)))
		}
	}
}
