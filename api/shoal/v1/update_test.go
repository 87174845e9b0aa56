package shoalv1

import (
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestParseUpdateChoices(t *testing.T) {
	for in, want := range map[string]UpdateOrder{"stop-first": UpdateOrder_UPDATE_ORDER_STOP_FIRST, "Start-First": UpdateOrder_UPDATE_ORDER_START_FIRST} {
		if got, err := ParseUpdateOrder(in); err != nil || got != want || UpdateOrderName(got) != strings.ToLower(in) {
			t.Errorf("ParseUpdateOrder(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, want := range map[string]UpdateFailureAction{"pause": UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE,
		"continue": UpdateFailureAction_UPDATE_FAILURE_ACTION_CONTINUE, "ROLLBACK": UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK} {
		if got, err := ParseFailureAction(in); err != nil || got != want || FailureActionName(got) != strings.ToLower(in) {
			t.Errorf("ParseFailureAction(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseUpdateOrder("stop-frist"); err == nil || !strings.Contains(err.Error(), `update order "stop-frist": want stop-first or start-first`) {
		t.Errorf("typo: %v", err)
	}
	if _, err := ParseFailureAction("retry"); err == nil || !strings.Contains(err.Error(), "want pause or continue or rollback") {
		t.Errorf("typo: %v", err)
	}
}

// TestUpdateConfigDefaults: an unset config is Swarm's default; a config
// given keeps what it sets (parallelism 0 is every slot at once) and gets
// the rest.
func TestUpdateConfigDefaults(t *testing.T) {
	s := &ServiceSpec{Name: "web", Task: &TaskSpec{Container: &ContainerSpec{Image: "x"}}, Rollback: &UpdateConfig{Parallelism: 0, Order: UpdateOrder_UPDATE_ORDER_START_FIRST}}
	ApplyServiceDefaults(s)
	if !proto.Equal(s.GetUpdate(), DefaultUpdateConfig()) {
		t.Errorf("update = %v, want the default", s.GetUpdate())
	}
	want := DefaultUpdateConfig()
	want.Parallelism, want.Order = 0, UpdateOrder_UPDATE_ORDER_START_FIRST
	if !proto.Equal(s.GetRollback(), want) {
		t.Errorf("rollback = %v, want %v", s.GetRollback(), want)
	}
	if d := DefaultUpdateConfig(); d.GetParallelism() != 1 || d.GetMonitor().AsDuration() != 5*time.Second ||
		d.GetFailureAction() != UpdateFailureAction_UPDATE_FAILURE_ACTION_PAUSE || d.GetOrder() != UpdateOrder_UPDATE_ORDER_STOP_FIRST {
		t.Errorf("defaults are not Swarm's: %v", d)
	}
}

func TestValidateUpdateConfig(t *testing.T) {
	tests := []struct {
		name  string
		field string
		c     *UpdateConfig
		want  string // "" for valid
	}{
		{"nil", "update", nil, ""},
		{"everything", "update", &UpdateConfig{Parallelism: 3, Delay: durationpb.New(time.Second), MaxFailureRatio: 1, FailureAction: UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK}, ""},
		{"ratio above 1", "update", &UpdateConfig{MaxFailureRatio: 1.01}, "update.max_failure_ratio"},
		{"negative ratio", "rollback", &UpdateConfig{MaxFailureRatio: -1}, "rollback.max_failure_ratio"},
		{"NaN ratio", "update", &UpdateConfig{MaxFailureRatio: float32(math.NaN())}, "update.max_failure_ratio"},
		{"negative delay", "update", &UpdateConfig{Delay: durationpb.New(-time.Second)}, "update.delay"},
		{"negative monitor", "update", &UpdateConfig{Monitor: durationpb.New(-time.Second)}, "update.monitor"},
		{"huge parallelism", "update", &UpdateConfig{Parallelism: MaxReplicas + 1}, "update.parallelism"},
		{"unknown action", "update", &UpdateConfig{FailureAction: 9}, "update.failure_action"},
		{"unknown order", "update", &UpdateConfig{Order: 9}, "update.order"},
		{"rollback rolled back", "rollback", &UpdateConfig{FailureAction: UpdateFailureAction_UPDATE_FAILURE_ACTION_ROLLBACK}, "rollback.failure_action"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validateUpdateConfig(tt.field, tt.c)
			if (err == nil) != (tt.want == "") || (err != nil && !strings.HasPrefix(err.Error(), tt.want)) {
				t.Errorf("validate = %v, want %q", err, tt.want)
			}
		})
	}
}
