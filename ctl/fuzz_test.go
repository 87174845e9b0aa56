package ctl

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	api "github.com/shoal-project/shoal/api/shoal/v1"
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

func FuzzNetworkOpts(f *testing.F) {
	for _, s := range []string{"encrypted", "encrypted=true", "encrypted=false", "encrypted=maybe", "bogus", "=x", "", "encrypted=true=false"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, opt string) {
		spec := &api.NetworkSpec{}
		err := applyNetworkOpts(spec, []string{opt})
		key, _, _ := strings.Cut(opt, "=")
		if err != nil {
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", key)) && !strings.Contains(err.Error(), fmt.Sprintf("%q", opt)) {
				t.Errorf("error %q does not name the option %q", err, opt)
			}
			if spec.GetEncrypted() {
				t.Errorf("refused %q but set encrypted", opt)
			}
			return
		}
		if !slices.Contains([]string{"encrypted", "encrypted=true", "encrypted=false"}, opt) {
			t.Errorf("accepted --opt %q", opt)
		}
		if spec.GetEncrypted() != (opt != "encrypted=false") {
			t.Errorf("--opt %q set encrypted %v", opt, spec.GetEncrypted())
		}
	})
}

func FuzzCreateInput(f *testing.F) {
	for _, s := range []string{"A=1", "FOO", "=x", "a_b=", "1A=2", "node.labels.x==y", "x!=", "k=v=w"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if err := checkEnv("--env", s); err == nil {
			key, _, _ := strings.Cut(s, "=")
			if !envKeyRE.MatchString(key) || !strings.Contains(s, "=") {
				t.Errorf("accepted env %q", s)
			}
		}
		if labels, err := parseLabels("--label", []string{s}); err == nil && len(labels) != 1 {
			t.Errorf("label %q gave %v", s, labels)
		}
		if err := checkConstraint("--constraint", s); err == nil && !strings.Contains(s, "==") && !strings.Contains(s, "!=") {
			t.Errorf("accepted constraint %q", s)
		}
		if err := checkKey("--env-rm", "variable", s); err == nil && (strings.Contains(s, "=") || strings.TrimSpace(s) == "") {
			t.Errorf("accepted key %q", s)
		}
		if env := editEnv([]string{"A=1", "B=2"}, []string{s}, nil); checkEnv("--env-add", s) == nil && env[len(env)-1] != s {
			t.Errorf("added %q, env %v", s, env)
		}
		if _, err := parsePsFilters([]string{s}); err == nil && !strings.HasPrefix(s, "desired-state=") && !strings.HasPrefix(s, "node=") {
			t.Errorf("accepted filter %q", s)
		}
	})
}

// changedFlags is a FlagSet's Changed for the fuzzer.
type changedFlags map[string]bool

func (c changedFlags) Changed(name string) bool { return c[name] }

func FuzzNodeInput(f *testing.F) {
	for _, s := range []string{"drain", "zone=eu", "=eu", "zone", "a=b=c", "", "192.0.2.10", "[::1]:4242", "tcp://m:1", "unix:///x", "worker"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseNodeUpdate(changedFlags{"availability": true}, s, []string{s}, nil)
		if err == nil {
			if _, ok := availabilities[s]; !ok {
				t.Errorf("accepted availability %q", s)
			}
			if len(u.labelAdd) != 1 {
				t.Errorf("label %q gave %v", s, u.labelAdd)
			}
		}
		if u, err := parseNodeUpdate(changedFlags{}, "", nil, []string{s}); err == nil && (len(u.labelRm) != 1 || strings.Contains(s, "=")) {
			t.Errorf("accepted --label-rm %q as %v", s, u.labelRm)
		}
		if addr, err := hostAddr("--host", s); err == nil {
			host, port, err := net.SplitHostPort(addr)
			if err != nil || host == "" || port == "" {
				t.Errorf("hostAddr(%q) = %q, not HOST:PORT", s, addr)
			}
		}
		if r, err := parseJoinRole(s); err == nil && roleWord(r) != s {
			t.Errorf("role %q parsed as %s", s, r)
		}
	})
}

func FuzzHostAddrs(f *testing.F) {
	for _, s := range []string{"m1", "m1,m2:99", "m1,,m2", "[::1]:1, tcp://m2", "m1,m2:x", ",", "a:b:c,d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		addrs, err := hostAddrs("--host", list)
		if err != nil {
			// The message names the entry at fault, or the whole list.
			named := strings.Contains(err.Error(), fmt.Sprintf("%q", list))
			for _, entry := range strings.Split(list, ",") {
				named = named || strings.Contains(err.Error(), fmt.Sprintf("%q", strings.TrimSpace(entry)))
			}
			if !named {
				t.Errorf("error %q names no entry of %q", err, list)
			}
			return
		}
		if len(addrs) == 0 || len(addrs) > strings.Count(list, ",")+1 {
			t.Errorf("hostAddrs(%q) = %q", list, addrs)
		}
		for i, addr := range addrs {
			if host, port, err := net.SplitHostPort(addr); err != nil || host == "" || port == "" {
				t.Errorf("hostAddrs(%q) gave %q, not HOST:PORT", list, addr)
			}
			if slices.Contains(addrs[:i], addr) {
				t.Errorf("hostAddrs(%q) lists %q twice", list, addr)
			}
		}
	})
}
