package shoalv1

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
)

// Limits on specs. They keep one request from making the managers do
// unbounded work.
const (
	MaxReplicas       = 100000
	maxNameLen        = 63
	maxStopGrace      = 10 * time.Minute
	DefaultStopGrace  = 10 * time.Second
	DefaultMaxDelay   = 30 * time.Second
	DefaultHistory    = 5
	maxHistory        = 100
	maxEnvEntries     = 1000
	maxImageRefLength = 512
)

var (
	serviceNameRe = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	envKeyRe      = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// SpecError is a spec that cannot be accepted; Field names what is wrong
// as the user wrote it (spec.task.container.image).
type SpecError struct {
	Field string
	Msg   string
}

func (e *SpecError) Error() string { return e.Field + ": " + e.Msg }

func specErr(field, format string, args ...any) error {
	return &SpecError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ValidateServiceName checks a service name.
func ValidateServiceName(name string) error {
	switch {
	case name == "":
		return specErr("name", "a service needs a name")
	case len(name) > maxNameLen:
		return specErr("name", "%q is %d characters long; the limit is %d", name, len(name), maxNameLen)
	case !serviceNameRe.MatchString(name) || strings.HasSuffix(name, "-"):
		return specErr("name", "%q is not valid: use lower-case letters, digits and '-', starting with a letter and not ending with '-'", name)
	}
	return nil
}

// ValidateServiceSpec checks everything that can be checked without the
// cluster's state. Placement constraints are checked by the scheduler's
// parser at the API edge.
func ValidateServiceSpec(s *ServiceSpec) error {
	if s == nil {
		return specErr("spec", "missing")
	}
	if err := ValidateServiceName(s.GetName()); err != nil {
		return err
	}
	if err := validateMode(s); err != nil {
		return err
	}
	if err := validateResources(s.GetTask().GetResources()); err != nil {
		return err
	}
	if s.GetTaskHistoryLimit() > maxHistory {
		return specErr("task_history_limit", "%d is more than the limit of %d", s.GetTaskHistoryLimit(), maxHistory)
	}
	c := s.GetTask().GetContainer()
	if c == nil {
		return specErr("task.container", "missing: a service needs at least an image")
	}
	img := strings.TrimSpace(c.GetImage())
	switch {
	case img == "":
		return specErr("task.container.image", "empty: name the image to run")
	case img != c.GetImage() || strings.ContainsAny(img, " \t\n"):
		return specErr("task.container.image", "%q contains white space", c.GetImage())
	case len(img) > maxImageRefLength:
		return specErr("task.container.image", "reference longer than %d characters", maxImageRefLength)
	}
	if len(c.GetEnv()) > maxEnvEntries {
		return specErr("task.container.env", "%d entries; the limit is %d", len(c.GetEnv()), maxEnvEntries)
	}
	for _, e := range c.GetEnv() {
		if err := ValidateEnv(e); err != nil {
			return specErr("task.container.env", "%v", err)
		}
	}
	if d := c.GetStopGracePeriod(); d != nil {
		if err := d.CheckValid(); err != nil || d.AsDuration() < 0 || d.AsDuration() > maxStopGrace {
			return specErr("task.container.stop_grace_period", "%v is out of range 0s..%v", d.AsDuration(), maxStopGrace)
		}
	}
	if err := validateHealthConfig(c.GetHealthcheck()); err != nil {
		return err
	}
	if rp := s.GetTask().GetRestart(); rp != nil {
		for name, d := range map[string]*durationpb.Duration{"delay": rp.GetDelay(), "max_delay": rp.GetMaxDelay(), "window": rp.GetWindow()} {
			if d == nil {
				continue
			}
			if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
				return specErr("task.restart."+name, "%v must be 0 or more", d.AsDuration())
			}
		}
		if _, ok := RestartCondition_name[int32(rp.GetCondition())]; !ok {
			return specErr("task.restart.condition", "unknown condition %d", rp.GetCondition())
		}
	}
	if err := validateUpdateConfig("update", s.GetUpdate()); err != nil {
		return err
	}
	return validateUpdateConfig("rollback", s.GetRollback())
}

// ValidateEnv checks one KEY=VALUE entry.
func ValidateEnv(e string) error {
	k, _, ok := strings.Cut(e, "=")
	if !ok {
		return fmt.Errorf("%q: want KEY=VALUE", e)
	}
	if !envKeyRe.MatchString(k) {
		return fmt.Errorf("%q: %q is not a valid variable name (letters, digits and '_', not starting with a digit)", e, k)
	}
	return nil
}

// ApplyServiceDefaults fills in what the user left out, so that the stored
// spec says exactly what runs.
func ApplyServiceDefaults(s *ServiceSpec) {
	if s.Task == nil {
		s.Task = &TaskSpec{}
	}
	if s.Task.Restart == nil {
		s.Task.Restart = &RestartPolicy{}
	}
	applyModeDefaults(s)
	rp := s.Task.Restart
	if rp.Condition == RestartCondition_RESTART_CONDITION_UNSPECIFIED {
		rp.Condition = RestartCondition_RESTART_CONDITION_ANY
	}
	if rp.Delay == nil {
		rp.Delay = durationpb.New(0)
	}
	if rp.MaxDelay == nil {
		rp.MaxDelay = durationpb.New(DefaultMaxDelay)
	}
	if c := s.Task.Container; c != nil && c.StopGracePeriod == nil {
		c.StopGracePeriod = durationpb.New(DefaultStopGrace)
	}
	if s.TaskHistoryLimit == 0 {
		s.TaskHistoryLimit = DefaultHistory
	}
	s.Update = applyUpdateDefaults(s.Update)
	s.Rollback = applyUpdateDefaults(s.Rollback)
}
