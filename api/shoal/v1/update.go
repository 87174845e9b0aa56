package shoalv1

import (
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

// Swarm's update defaults, which users coming from Swarm expect: one slot
// at a time, each new task watched for 5s, pause on the first failure,
// old task stopped first.
const (
	DefaultUpdateParallelism = 1
	DefaultUpdateMonitor     = 5 * time.Second
)

// The names users type for update orders and failure actions, as Docker's
// --update-order and --update-failure-action take them.
const (
	UpdateOrderStopFirst  = "stop-first"
	UpdateOrderStartFirst = "start-first"

	FailureActionPause    = "pause"
	FailureActionContinue = "continue"
	FailureActionRollback = "rollback"
)

// ParseUpdateOrder reads stop-first or start-first.
func ParseUpdateOrder(s string) (UpdateOrder, error) {
	v, err := parseChoice("update order", s, UpdateOrderStopFirst, UpdateOrderStartFirst)
	if err != nil {
		return 0, err
	}
	if v == UpdateOrderStartFirst {
		return UpdateOrder_UPDATE_ORDER_START_FIRST, nil
	}
	return UpdateOrder_UPDATE_ORDER_STOP_FIRST, nil
}

// ParseFailureAction reads pause, continue or rollback.
func ParseFailureAction(s string) (UpdateFailureAction, error) {
	v, err := parseChoice("failure action", s, FailureActionPause, FailureActionContinue, FailureActionRollback)
	if err != nil {
		return 0, err
	}
	switch v {
	case FailureActionContinue:
		return UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE, nil
	case FailureActionRollback:
		return UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK, nil
	}
	return UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE, nil
}

// UpdateOrderName is an order as users type it: "start-first".
func UpdateOrderName(o UpdateOrder) string {
	if o == UpdateOrder_UPDATE_ORDER_START_FIRST {
		return UpdateOrderStartFirst
	}
	return UpdateOrderStopFirst
}

// FailureActionName is a failure action as users type it: "rollback".
func FailureActionName(a UpdateFailureAction) string {
	switch a {
	case UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE:
		return FailureActionContinue
	case UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK:
		return FailureActionRollback
	}
	return FailureActionPause
}

// UpdateStateName is a rollout state as users see it: "updating",
// "rollback_paused".
func UpdateStateName(s UpdateState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "UPDATE_STATE_"))
}

// DefaultUpdateConfig is the update (and rollback) config of a service
// that sets none.
func DefaultUpdateConfig() *UpdateConfig {
	return &UpdateConfig{
		Parallelism:   DefaultUpdateParallelism,
		Delay:         durationpb.New(0),
		FailureAction: UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE,
		Monitor:       durationpb.New(DefaultUpdateMonitor),
		Order:         UpdateOrder_UPDATE_ORDER_STOP_FIRST,
	}
}

// applyUpdateDefaults returns c with what it leaves out filled in; a nil c
// is the default config. A config that is given keeps its parallelism:
// there 0 means every slot at once.
func applyUpdateDefaults(c *UpdateConfig) *UpdateConfig {
	if c == nil {
		return DefaultUpdateConfig()
	}
	if c.Delay == nil {
		c.Delay = durationpb.New(0)
	}
	if c.Monitor == nil {
		c.Monitor = durationpb.New(DefaultUpdateMonitor)
	}
	if c.FailureAction == UpdateFailureAction_UPDATE_FAILURE_ACTION_UNSPECIFIED {
		c.FailureAction = UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE
	}
	if c.Order == UpdateOrder_UPDATE_ORDER_UNSPECIFIED {
		c.Order = UpdateOrder_UPDATE_ORDER_STOP_FIRST
	}
	return c
}

// validateUpdateConfig checks an update or rollback config; field is
// "update" or "rollback".
func validateUpdateConfig(field string, c *UpdateConfig) error {
	if c == nil {
		return nil
	}
	if c.GetParallelism() > MaxReplicas {
		return specErr(field+".parallelism", "%d is more than the limit of %d", c.GetParallelism(), MaxReplicas)
	}
	for name, d := range map[string]*durationpb.Duration{"delay": c.GetDelay(), "monitor": c.GetMonitor()} {
		if d == nil {
			continue
		}
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
			return specErr(field+"."+name, "%v must be 0 or more", d.AsDuration())
		}
	}
	if r := float64(c.GetMaxFailureRatio()); math.IsNaN(r) || r < 0 || r > 1 {
		return specErr(field+".max_failure_ratio", "%v is out of range: want a fraction from 0 to 1", c.GetMaxFailureRatio())
	}
	if _, ok := UpdateFailureAction_name[int32(c.GetFailureAction())]; !ok {
		return specErr(field+".failure_action", "unknown failure action %d", c.GetFailureAction())
	}
	if _, ok := UpdateOrder_name[int32(c.GetOrder())]; !ok {
		return specErr(field+".order", "unknown order %d", c.GetOrder())
	}
	if field == "rollback" && c.GetFailureAction() == UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK {
		return specErr(field+".failure_action", "a rollback cannot be rolled back: want %s or %s", FailureActionPause, FailureActionContinue)
	}
	return nil
}
