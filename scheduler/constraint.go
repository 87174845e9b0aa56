package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Operator compares a node's attribute with a constraint's value.
type Operator int

const (
	// OpEqual matches nodes whose attribute equals the value.
	OpEqual Operator = iota + 1
	// OpNotEqual matches nodes whose attribute differs from the value,
	// including nodes that lack the attribute (an unset label).
	OpNotEqual
)

func (o Operator) String() string {
	switch o {
	case OpEqual:
		return "=="
	case OpNotEqual:
		return "!="
	}
	return fmt.Sprintf("Operator(%d)", int(o))
}

// attribute is the node property a constraint looks at.
type attribute int

const (
	attrID attribute = iota + 1
	attrHostname
	attrRole
	attrLabel
	attrOS
	attrArch
)

// labelPrefix starts every node label key.
const labelPrefix = "node.labels."

// knownKeysHint is appended to unknown-key errors so the user learns the
// whole vocabulary at once instead of guessing again.
const knownKeysHint = "use node.id, node.hostname, node.role, node.labels.KEY, node.platform.os or node.platform.arch"

// Constraint is one parsed placement expression such as node.labels.zone==eu.
// Values compare case-insensitively, as in Swarm; label names are
// case-sensitive because labels are.
type Constraint struct {
	// Key is the normalized key: lower-case for the fixed keys, and
	// "node.labels." followed by the label name as written.
	Key string
	Op  Operator
	// Value is the value as written, without surrounding whitespace.
	Value string

	attr  attribute
	label string // label name for attrLabel
	match string // Value as compared: architecture aliases resolved
}

// String gives the constraint back in canonical syntax; parsing it again
// yields the same Constraint.
func (c Constraint) String() string {
	return c.Key + c.Op.String() + c.Value
}

// Matches reports whether node n satisfies the constraint. A node that lacks
// the attribute (no description yet, label unset) has the empty value, so it
// fails == and passes !=.
func (c Constraint) Matches(n *api.Node) bool {
	var got string
	switch c.attr {
	case attrID:
		got = n.GetId()
	case attrHostname:
		got = n.GetDescription().GetHostname()
	case attrRole:
		got = roleName(n.GetRole())
	case attrLabel:
		got = n.GetSpec().GetLabels()[c.label]
	case attrOS:
		got = n.GetDescription().GetOs()
	case attrArch:
		got = normalizeArch(n.GetDescription().GetArch())
	}
	equal := strings.EqualFold(got, c.match)
	if c.Op == OpNotEqual {
		return !equal
	}
	return equal
}

// roleName is the name node.role compares with. A node whose role is not
// yet known is treated as a worker: every node runs tasks, only managers are
// special.
func roleName(r api.NodeRole) string {
	if r == api.NodeRole_NODE_ROLE_MANAGER {
		return "manager"
	}
	return "worker"
}

// archAliases maps the names uname and image tools use to the Go names that
// nodes report, so node.platform.arch==x86_64 means what the user meant.
var archAliases = map[string]string{
	"x86_64":  "amd64",
	"x86-64":  "amd64",
	"aarch64": "arm64",
	"armv7l":  "arm",
	"armhf":   "arm",
	"i386":    "386",
	"i686":    "386",
}

func normalizeArch(a string) string {
	if n, ok := archAliases[strings.ToLower(a)]; ok {
		return n
	}
	return a
}

// ParseConstraints parses placement constraints in Swarm's syntax, KEY==VALUE
// or KEY!=VALUE, with whitespace allowed around key, operator and value. It
// reports every bad expression, not only the first, so a user can fix a spec
// in one go.
func ParseConstraints(exprs []string) ([]Constraint, error) {
	if len(exprs) == 0 {
		return nil, nil
	}
	out := make([]Constraint, 0, len(exprs))
	var errs []error
	for _, e := range exprs {
		c, err := parseConstraint(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, c)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

func parseConstraint(expr string) (Constraint, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("constraint %q: %s", expr, fmt.Sprintf(format, args...))
	}
	s := strings.TrimSpace(expr)
	if s == "" {
		return Constraint{}, bad("empty; write KEY==VALUE or KEY!=VALUE, for example node.role==manager")
	}
	// The leftmost operator wins, so "a!=b==c" is read as a != "b==c" and
	// then refused for its second operator rather than misread.
	eq, ne := strings.Index(s, "=="), strings.Index(s, "!=")
	var op Operator
	var at int
	switch {
	case eq < 0 && ne < 0:
		return Constraint{}, bad("no operator; write KEY==VALUE or KEY!=VALUE, for example node.role==manager")
	case ne < 0 || (eq >= 0 && eq < ne):
		op, at = OpEqual, eq
	default:
		op, at = OpNotEqual, ne
	}
	key := strings.TrimSpace(s[:at])
	value := strings.TrimSpace(s[at+2:])
	if key == "" {
		return Constraint{}, bad("missing key before %s", op)
	}
	if value == "" {
		return Constraint{}, bad("missing value after %s", op)
	}
	if strings.Contains(value, "==") || strings.Contains(value, "!=") || value[0] == '=' {
		return Constraint{}, bad("more than one operator; use a single == or != per constraint")
	}
	if i := strings.IndexFunc(key, unicode.IsSpace); i >= 0 {
		return Constraint{}, bad("key %q contains whitespace", key)
	}
	if strings.IndexFunc(value, unicode.IsControl) >= 0 {
		return Constraint{}, bad("value contains a control character")
	}
	if strings.IndexFunc(key, unicode.IsControl) >= 0 {
		return Constraint{}, bad("key contains a control character")
	}

	c := Constraint{Op: op, Value: value, match: value}
	lower := strings.ToLower(key)
	switch {
	case lower == "node.id":
		c.attr = attrID
	case lower == "node.hostname":
		c.attr = attrHostname
	case lower == "node.role":
		c.attr = attrRole
		if !strings.EqualFold(value, "manager") && !strings.EqualFold(value, "worker") {
			return Constraint{}, bad("node.role is manager or worker, not %q", value)
		}
	case lower == "node.platform.os":
		c.attr = attrOS
	case lower == "node.platform.arch":
		c.attr = attrArch
		c.match = normalizeArch(value)
	case lower == "node.labels":
		return Constraint{}, bad("node.labels needs a label name: node.labels.KEY")
	case strings.HasPrefix(lower, labelPrefix):
		c.attr = attrLabel
		c.label = key[len(labelPrefix):]
		if c.label == "" {
			return Constraint{}, bad("node.labels needs a label name: node.labels.KEY")
		}
		if strings.ContainsAny(c.label, "=!") {
			return Constraint{}, bad("label name %q contains = or !", c.label)
		}
		c.Key = labelPrefix + c.label
		return c, nil
	default:
		return Constraint{}, bad("unknown key %s; %s", key, knownKeysHint)
	}
	c.Key = lower
	return c, nil
}
