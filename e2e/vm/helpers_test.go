package vm

import (
	"bytes"
	"regexp"
	"testing"
)

// The harness's own helpers, checked without VMs.

func TestShellQuote(t *testing.T) {
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{"node", "ls"}, "node ls"},
		{[]string{"--format", "{{.Name}} {{.CurrentState}}"}, "--format '{{.Name}} {{.CurrentState}}'"},
		{[]string{"it's"}, `'it'\''s'`},
		{[]string{""}, "''"},
		{[]string{"a;rm -rf /", "$HOME"}, "'a;rm -rf /' '$HOME'"},
		{[]string{"--publish", "8080:80", "shoal.test/echo:latest", "GREETING=hi"}, "--publish 8080:80 shoal.test/echo:latest GREETING=hi"},
	} {
		if got := shellQuote(tc.words...); got != tc.want {
			t.Errorf("shellQuote(%q) = %s, want %s", tc.words, got, tc.want)
		}
	}
}

func TestEchoField(t *testing.T) {
	body := "hostname=abc\ntask=web.1.xyz\nservice=web\nslot=1\nremote=10.0.0.2:5555\n"
	for key, want := range map[string]string{"task": "web.1.xyz", "service": "web", "hostname": "abc", "missing": ""} {
		if got := echoField(body, key); got != want {
			t.Errorf("echoField(%s) = %q, want %q", key, got, want)
		}
	}
}

func TestStampWriter(t *testing.T) {
	var out bytes.Buffer
	w := &stampWriter{w: &out, lineStart: true}
	for _, chunk := range []string{"Bringing machine 'manager1' up\n==> ma", "nager1: Progress: 10%\rProgress: 90%\r", "done\n"} {
		if _, err := w.Write([]byte(chunk)); err != nil {
			t.Fatal(err)
		}
	}
	want := regexp.MustCompile(`^\[ *\d+\.\d\] Bringing machine 'manager1' up\n\[ *\d+\.\d\] ==> manager1: Progress: 10%\n\[ *\d+\.\d\] Progress: 90%\n\[ *\d+\.\d\] done\n$`)
	if !want.MatchString(out.String()) {
		t.Errorf("stamped log:\n%s", out.String())
	}
}

func TestLBLine(t *testing.T) {
	line := `time=2026-12-03T18:30:25.818Z level=INFO msg="load balancer" component=netagent node=nrifmsbtg35h backend=ipvs`
	m := lbLine.FindStringSubmatch(line)
	if m == nil || m[1] != "ipvs" {
		t.Errorf("lbLine on %q: %v", line, m)
	}
	if lbLine.MatchString(`msg="load balancer programmed" backend=x`) {
		t.Error("lbLine matches another message")
	}
}
