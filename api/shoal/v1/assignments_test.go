package shoalv1

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestSplitAssignments(t *testing.T) {
	msg := &AssignmentsMessage{Type: AssignmentType_ASSIGNMENT_TYPE_FULL, ResultsIn: 7, Network: &NetworkDelta{
		Networks:         []*Network{{Id: "ingress", Ingress: true}},
		RemovedPeers:     []string{"gone"},
		RemovedEndpoints: []string{"t-old"},
		Services:         []*ServiceEndpoint{{ServiceId: "web", Name: "web"}},
	}}
	for i := 0; i < 30000; i++ {
		msg.Network.Endpoints = append(msg.Network.Endpoints, &NetworkEndpoint{
			TaskId: fmt.Sprintf("task%022d", i), NodeId: "node", ServiceId: "web", Serving: true,
			Networks: []*NetworkAttachment{{NetworkId: "ingress", Addr: "10.255.12.34/16", Mac: "02:42:0a:ff:0c:22"}},
		})
	}
	for i := 0; i < 100; i++ {
		msg.Changes = append(msg.Changes, &AssignmentChange{Action: AssignmentAction_ASSIGNMENT_ACTION_UPDATE, Task: &Task{Id: fmt.Sprint(i)}})
	}
	const limit = 1 << 20
	parts := SplitAssignments(msg, limit)
	if len(parts) < 3 {
		t.Fatalf("a %d-byte message in %d parts", proto.Size(msg), len(parts))
	}
	for i, p := range parts {
		if n := proto.Size(p); n > limit {
			t.Errorf("part %d is %d bytes, limit %d", i, n, limit)
		}
		if last := i == len(parts)-1; last != (p.GetType() != AssignmentType_ASSIGNMENT_TYPE_PART) {
			t.Errorf("part %d of %d has type %v", i, len(parts), p.GetType())
		}
	}
	got, err := JoinAssignments(parts[:len(parts)-1], parts[len(parts)-1])
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, msg) {
		t.Error("joined parts differ from the message")
	}
	if small := SplitAssignments(parts[len(parts)-1], limit); len(small) != 1 || small[0] != parts[len(parts)-1] {
		t.Error("a message within the limit was cut")
	}
	if _, err := JoinAssignments(parts[:1], parts[0]); err == nil {
		t.Error("parts ended by a part were joined")
	}
}
