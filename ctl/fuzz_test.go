package ctl

import (
	"fmt"
	"strings"
	"testing"
)

func FuzzParseScaleArg(f *testing.F) {
	for _, s := range []string{"web=3", "web", "=3", "web=-1", "web=x", "a=b=c", "web=18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, arg string) {
		st, err := parseScaleArg(arg)
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", arg)) {
				t.Errorf("error %q does not name the argument", err)
			}
			return
		}
		if st.service == "" || strings.Contains(st.service, "=") {
			t.Errorf("accepted %q as service %q", arg, st.service)
		}
	})
}

func FuzzCreateInput(f *testing.F) {
	for _, s := range []string{"A=1", "FOO", "=x", "a_b=", "1A=2", "node.labels.x==y", "x!=", "k=v=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := checkEnv(s); err == nil {
			key, _, _ := strings.Cut(s, "=")
			if !envKeyRE.MatchString(key) || !strings.Contains(s, "=") {
				t.Errorf("accepted env %q", s)
			}
		}
		if labels, err := parseLabels("--label", []string{s}); err == nil && len(labels) != 1 {
			t.Errorf("label %q gave %v", s, labels)
		}
		if err := checkConstraint(s); err == nil && !strings.Contains(s, "==") && !strings.Contains(s, "!=") {
			t.Errorf("accepted constraint %q", s)
		}
		if _, err := parsePsFilters([]string{s}); err == nil && !strings.HasPrefix(s, "desired-state=") && !strings.HasPrefix(s, "node=") {
			t.Errorf("accepted filter %q", s)
		}
	})
}
