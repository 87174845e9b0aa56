package shoalv1

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"strconv"
	"strings"
)

// idEncoding is lower-case base32 without padding: ids are safe in file
// names, DNS labels and container IDs.
var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewID returns a random 128-bit object id, 26 characters long.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("read random id: %v", err))
	}
	return idEncoding.EncodeToString(b[:])
}

// ShortID is the first 12 characters of an id, as tables show it.
func ShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// TaskName is a task's human name: <service>.<slot>.<id>, or for a global
// service's task <service>.<node id>.<id>, as Swarm names its containers.
func TaskName(t *Task) string {
	return fmt.Sprintf("%s.%s.%s", t.GetServiceName(), TaskPlace(t), t.GetId())
}

// TaskPlace is what tells a task's predecessors and successors from
// other tasks of its service: its slot, or for a global service's task
// (slot 0) its node.
func TaskPlace(t *Task) string {
	if t.GetSlot() == 0 && t.GetNodeId() != "" {
		return t.GetNodeId()
	}
	return strconv.FormatUint(t.GetSlot(), 10)
}

// IsTerminal reports whether a task state is final: a task in it will
// never run again.
func IsTerminal(s TaskState) bool {
	return s >= TaskState_TASK_STATE_COMPLETE
}

// StateName is a task state as users see it: "running", "failed".
func StateName(s TaskState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "TASK_STATE_"))
}
