package manager

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/internal/await"
)

// TestEncryptedNetworkNeedsWireGuard runs a service on an encrypted
// network through the leader's controllers: while the only node reports
// no WireGuard key its tasks stay pending with the reason, and once it
// reports one they are assigned. A service on a plain network is placed
// all along.
func TestEncryptedNetworkNeedsWireGuard(t *testing.T) {
	m := startManager(t)
	setNode(t, m, ready)
	for _, n := range []*api.NetworkSpec{{Name: "secure", Encrypted: true}, {Name: "plain"}} {
		if _, err := m.control.CreateNetwork(context.Background(), &api.CreateNetworkRequest{Spec: n}); err != nil {
			t.Fatal(err)
		}
	}
	on := func(name, network string) *api.Service {
		s := spec(name, 2)
		s.Networks = []string{network}
		return createService(t, m, s)
	}
	secure, plain := on("vault", "secure"), on("web", "plain")
	states := func(svc *api.Service, want api.TaskState, wantErr string) func() (bool, string) {
		return func() (bool, string) {
			var desc []string
			ok := 0
			for _, tk := range tasksOf(m, svc.GetId()) {
				st := tk.GetStatus()
				desc = append(desc, fmt.Sprintf("%s %v %q", tk.GetId(), st.GetState(), st.GetErr()))
				if st.GetState() == want && st.GetErr() == wantErr {
					ok++
				}
			}
			return ok == 2, strings.Join(desc, "\n")
		}
	}
	const why = "no suitable node (1 node lacks WireGuard (the task is on an encrypted network))"
	await.For(t, "the plain network's tasks assigned", states(plain, api.TaskState_TASK_STATE_ASSIGNED, ""))
	await.For(t, "the encrypted network's tasks pending with the reason", states(secure, api.TaskState_TASK_STATE_PENDING, why))

	setNode(t, m, func(n *api.Node) { n.Description.WireguardKey = slices.Repeat([]byte{1}, 32) })
	await.For(t, "the encrypted network's tasks assigned once the node has WireGuard", states(secure, api.TaskState_TASK_STATE_ASSIGNED, ""))
}
