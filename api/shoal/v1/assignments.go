package shoalv1

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// itemOverhead is what one item adds to a message besides its own size:
// its field tag and length prefix.
const itemOverhead = 8

// SplitAssignments cuts msg into messages of at most limit bytes each
// (ASSIGNMENT_TYPE_PART messages, then one of msg's type with its
// sequences), keeping every item whole and in order; JoinAssignments puts
// them back together. A message within limit is returned as it is. An
// item larger than limit goes alone in its part.
func SplitAssignments(msg *AssignmentsMessage, limit int) []*AssignmentsMessage {
	if proto.Size(msg) <= limit {
		return []*AssignmentsMessage{msg}
	}
	var parts []*AssignmentsMessage
	cur := &AssignmentsMessage{Network: &NetworkDelta{}}
	size := 0
	room := func(n int) *AssignmentsMessage {
		n += itemOverhead
		if size > 0 && size+n > limit {
			parts = append(parts, cur)
			cur = &AssignmentsMessage{Network: &NetworkDelta{}}
			size = 0
		}
		size += n
		return cur
	}
	d := msg.GetNetwork()
	for _, x := range d.GetNetworks() {
		p := room(proto.Size(x))
		p.Network.Networks = append(p.Network.Networks, x)
	}
	for _, x := range d.GetRemovedNetworks() {
		p := room(len(x))
		p.Network.RemovedNetworks = append(p.Network.RemovedNetworks, x)
	}
	for _, x := range d.GetPeers() {
		p := room(proto.Size(x))
		p.Network.Peers = append(p.Network.Peers, x)
	}
	for _, x := range d.GetRemovedPeers() {
		p := room(len(x))
		p.Network.RemovedPeers = append(p.Network.RemovedPeers, x)
	}
	for _, x := range d.GetEndpoints() {
		p := room(proto.Size(x))
		p.Network.Endpoints = append(p.Network.Endpoints, x)
	}
	for _, x := range d.GetRemovedEndpoints() {
		p := room(len(x))
		p.Network.RemovedEndpoints = append(p.Network.RemovedEndpoints, x)
	}
	for _, x := range d.GetServices() {
		p := room(proto.Size(x))
		p.Network.Services = append(p.Network.Services, x)
	}
	for _, x := range d.GetRemovedServices() {
		p := room(len(x))
		p.Network.RemovedServices = append(p.Network.RemovedServices, x)
	}
	for _, c := range msg.GetChanges() {
		p := room(proto.Size(c))
		p.Changes = append(p.Changes, c)
	}
	for _, p := range parts {
		p.Type = AssignmentType_ASSIGNMENT_TYPE_PART
	}
	cur.Type, cur.AppliesTo, cur.ResultsIn = msg.GetType(), msg.GetAppliesTo(), msg.GetResultsIn()
	return append(parts, cur)
}

// JoinAssignments puts the parts of a message back together: parts are
// the ASSIGNMENT_TYPE_PART messages received, in order, and last the
// message that ended them.
func JoinAssignments(parts []*AssignmentsMessage, last *AssignmentsMessage) (*AssignmentsMessage, error) {
	if len(parts) == 0 {
		return last, nil
	}
	if last.GetType() == AssignmentType_ASSIGNMENT_TYPE_PART {
		return nil, fmt.Errorf("assignments: a message of parts must end with a FULL or INCREMENTAL one")
	}
	out := &AssignmentsMessage{Type: last.GetType(), AppliesTo: last.GetAppliesTo(), ResultsIn: last.GetResultsIn(), Network: &NetworkDelta{}}
	for _, p := range append(parts, last) {
		out.Changes = append(out.Changes, p.GetChanges()...)
		d := p.GetNetwork()
		out.Network.Networks = append(out.Network.Networks, d.GetNetworks()...)
		out.Network.RemovedNetworks = append(out.Network.RemovedNetworks, d.GetRemovedNetworks()...)
		out.Network.Peers = append(out.Network.Peers, d.GetPeers()...)
		out.Network.RemovedPeers = append(out.Network.RemovedPeers, d.GetRemovedPeers()...)
		out.Network.Endpoints = append(out.Network.Endpoints, d.GetEndpoints()...)
		out.Network.RemovedEndpoints = append(out.Network.RemovedEndpoints, d.GetRemovedEndpoints()...)
		out.Network.Services = append(out.Network.Services, d.GetServices()...)
		out.Network.RemovedServices = append(out.Network.RemovedServices, d.GetRemovedServices()...)
	}
	return out, nil
}
