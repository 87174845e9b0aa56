package containerd

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
	"github.com/shoal-project/shoal/image"
	"github.com/shoal-project/shoal/internal/testimage"
	"github.com/shoal-project/shoal/worker/exec"
)

// TestEffectiveHealthcheck is Docker's merge of a service's health check
// flags over the image's HEALTHCHECK, then Docker's defaults.
func TestEffectiveHealthcheck(t *testing.T) {
	d := durationpb.New
	defaults := func(test ...string) *api.HealthConfig {
		return &api.HealthConfig{Test: test, Interval: d(30 * time.Second), Timeout: d(30 * time.Second), StartPeriod: d(0), Retries: 3}
	}
	image := &api.HealthConfig{Test: []string{"CMD", "/check"}, Interval: d(5 * time.Second), Retries: 2}
	tests := []struct {
		name        string
		spec, image *api.HealthConfig
		want        *api.HealthConfig
	}{
		{"neither", nil, nil, nil},
		{"image only, defaults fill the rest", nil, image,
			&api.HealthConfig{Test: []string{"CMD", "/check"}, Interval: d(5 * time.Second), Timeout: d(30 * time.Second), StartPeriod: d(0), Retries: 2}},
		{"spec only", &api.HealthConfig{Test: []string{"CMD-SHELL", "curl -f localhost"}}, nil, defaults("CMD-SHELL", "curl -f localhost")},
		{"spec's command replaces the image's, its timings stay", &api.HealthConfig{Test: []string{"CMD-SHELL", "true"}}, image,
			&api.HealthConfig{Test: []string{"CMD-SHELL", "true"}, Interval: d(5 * time.Second), Timeout: d(30 * time.Second), StartPeriod: d(0), Retries: 2}},
		{"spec's timings over the image's command", &api.HealthConfig{Interval: d(time.Second), Timeout: d(2 * time.Second), StartPeriod: d(time.Minute), Retries: 5}, image,
			&api.HealthConfig{Test: []string{"CMD", "/check"}, Interval: d(time.Second), Timeout: d(2 * time.Second), StartPeriod: d(time.Minute), Retries: 5}},
		{"timings without any command: no check", &api.HealthConfig{Interval: d(time.Second)}, nil, nil},
		{"NONE disables the image's", &api.HealthConfig{Test: []string{"NONE"}}, image, nil},
		{"an image's NONE", nil, &api.HealthConfig{Test: []string{"NONE"}}, nil},
		{"spec's command over an image's NONE", &api.HealthConfig{Test: []string{"CMD", "/ok"}}, &api.HealthConfig{Test: []string{"NONE"}}, defaults("CMD", "/ok")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var specCopy, imageCopy *api.HealthConfig
			if tc.spec != nil {
				specCopy = proto.Clone(tc.spec).(*api.HealthConfig)
			}
			if tc.image != nil {
				imageCopy = proto.Clone(tc.image).(*api.HealthConfig)
			}
			got := effectiveHealthcheck(tc.spec, tc.image)
			if !proto.Equal(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
			if (tc.spec != nil && !proto.Equal(tc.spec, specCopy)) || (tc.image != nil && !proto.Equal(tc.image, imageCopy)) {
				t.Error("the merge changed its inputs")
			}
		})
	}
}

// TestParseImageHealthcheck turns an image's HEALTHCHECK into a spec's
// health check: zero durations are unset, as in Docker.
func TestParseImageHealthcheck(t *testing.T) {
	d := durationpb.New
	tests := []struct {
		name, config string
		want         *api.HealthConfig
		wantErr      bool
	}{
		{"none", `{"config":{"Entrypoint":["/echo"]}}`, nil, false},
		{"docker's", `{"config":{"Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/"],"Interval":5000000000,"Timeout":3000000000,"StartPeriod":10000000000,"Retries":2}}}`,
			&api.HealthConfig{Test: []string{"CMD-SHELL", "curl -f http://localhost/"}, Interval: d(5 * time.Second), Timeout: d(3 * time.Second), StartPeriod: d(10 * time.Second), Retries: 2}, false},
		{"zero durations are unset", `{"config":{"Healthcheck":{"Test":["CMD","/check"],"Interval":0}}}`,
			&api.HealthConfig{Test: []string{"CMD", "/check"}}, false},
		{"broken", `{"config":`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseImageHealthcheck([]byte(tc.config))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProbeArgs(t *testing.T) {
	tests := []struct {
		test    []string
		want    []string
		wantErr bool
	}{
		{[]string{"CMD", "/echo", "health"}, []string{"/echo", "health"}, false},
		{[]string{"CMD-SHELL", "curl -f http://localhost/ || exit 1"}, []string{"/bin/sh", "-c", "curl -f http://localhost/ || exit 1"}, false},
		{[]string{"CMD"}, nil, true},
		{[]string{"NONE"}, nil, true},
		{[]string{"/check", "x"}, nil, true},
		{nil, nil, true},
	}
	for _, tc := range tests {
		got, err := probeArgs(tc.test)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("probeArgs(%q) = %q, %v; want %q (error %v)", tc.test, got, err, tc.want, tc.wantErr)
		}
	}
}

// prober is the controller's health ability, which the agent finds by
// type assertion.
func prober(t *testing.T, ctl exec.Controller) exec.Prober {
	t.Helper()
	p, ok := ctl.(exec.Prober)
	if !ok {
		t.Fatalf("%T cannot run health checks", ctl)
	}
	return p
}

// check is a health check with the given test and a timeout that a
// healthy command meets easily on a loaded machine.
func check(test ...string) *api.HealthConfig {
	return &api.HealthConfig{Test: test, Interval: durationpb.New(time.Second), Timeout: durationpb.New(10 * time.Second), Retries: 1}
}

// runningEcho is an echo task whose container runs, in a fresh fixture.
func runningEcho(t *testing.T, env ...string) (*fixture, context.Context, exec.Controller) {
	f := newFixture(t)
	ctx := testContext(t)
	ctl := f.controller(t, f.e, f.echoTask(env...))
	prepareAndStart(t, ctx, ctl)
	return f, ctx, ctl
}

// noChecksLeft fails the test if the task's container runs any process
// besides its main one: a health check left behind.
func (f *fixture) noChecksLeft(t *testing.T, ctx context.Context, ctl exec.Controller) {
	t.Helper()
	task, err := ctl.(*controller).loadTask(f.e.nsContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	procs, err := task.Pids(f.e.nsContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if p.Pid != task.Pid() {
			t.Errorf("health check process %d left in the container", p.Pid)
		}
	}
}

// TestHealthcheckFromImage reads the image's HEALTHCHECK from containerd
// and merges the task's health check over it.
func TestHealthcheckFromImage(t *testing.T) {
	f := newFixture(t, testimage.WithHealthcheck(image.Healthcheck{
		Test: []string{"CMD", "/echo", "health"}, Interval: 2 * time.Second, Retries: 4,
	}))
	ctx := testContext(t)
	d := durationpb.New
	tests := []struct {
		name string
		spec *api.HealthConfig
		want *api.HealthConfig
	}{
		{"the image's", nil,
			&api.HealthConfig{Test: []string{"CMD", "/echo", "health"}, Interval: d(2 * time.Second), Timeout: d(30 * time.Second), StartPeriod: d(0), Retries: 4}},
		{"the task's timeout over it", &api.HealthConfig{Timeout: d(time.Second), StartPeriod: d(5 * time.Second)},
			&api.HealthConfig{Test: []string{"CMD", "/echo", "health"}, Interval: d(2 * time.Second), Timeout: d(time.Second), StartPeriod: d(5 * time.Second), Retries: 4}},
		{"the task's command", &api.HealthConfig{Test: []string{"CMD-SHELL", "/echo health"}},
			&api.HealthConfig{Test: []string{"CMD-SHELL", "/echo health"}, Interval: d(2 * time.Second), Timeout: d(30 * time.Second), StartPeriod: d(0), Retries: 4}},
		{"disabled by the task", &api.HealthConfig{Test: []string{"NONE"}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			task := f.echoTask()
			task.Spec.Container.Healthcheck = tc.spec
			ctl := f.controller(t, f.e, task)
			if err := ctl.Prepare(ctx); err != nil {
				t.Fatal(err)
			}
			got, err := prober(t, ctl).Healthcheck(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("got  %v\nwant %v", got, tc.want)
			}
		})
	}
}

// TestProbeRunsInContainer runs checks inside a running container: with
// the container's environment (the echo's port comes from it), in both of
// Docker's forms, failing with the check's own output, and passing once
// the server inside says it is healthy.
func TestProbeRunsInContainer(t *testing.T) {
	f, ctx, ctl := runningEcho(t, "ECHO_HEALTHY_AFTER=1s")
	p := prober(t, ctl)
	waitOutput(t, ctx, ctl, "echo listening")

	err := p.Probe(ctx, check("CMD", "/echo", "health"))
	if err == nil || !strings.Contains(err.Error(), "health check exited 1") || !strings.Contains(err.Error(), "starting: healthy after 1s") {
		t.Fatalf("check of a starting server: %v; want exit 1 with the server's answer", err)
	}
	deadline := time.Now().Add(testTimeout)
	for err != nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		err = p.Probe(ctx, check("CMD", "/echo", "health"))
	}
	if err != nil {
		t.Fatalf("the server never became healthy: %v", err)
	}
	if err := p.Probe(ctx, check("CMD-SHELL", "/echo health")); err != nil {
		t.Errorf("CMD-SHELL check: %v", err)
	}
	// A check can change what the container does, as any exec can.
	if err := p.Probe(ctx, check("CMD", "/echo", "set-health", "fail")); err != nil {
		t.Fatalf("set-health fail: %v", err)
	}
	if err := p.Probe(ctx, check("CMD-SHELL", "/echo health")); err == nil || !strings.Contains(err.Error(), "failing as asked") {
		t.Errorf("check after set-health fail: %v; want the server's reason", err)
	}
	if err := p.Probe(ctx, check("CMD", "/no/such/check")); err == nil {
		t.Error("a check whose program does not exist passed")
	} else {
		t.Logf("missing program: %v", err)
	}
	f.noChecksLeft(t, ctx, ctl)
}

// TestProbeTimesOut kills a check that hangs once its timeout passes, and
// leaves no process behind.
func TestProbeTimesOut(t *testing.T) {
	f, ctx, ctl := runningEcho(t)
	hc := check("CMD", "/echo", "sleep", "1h")
	hc.Timeout = durationpb.New(500 * time.Millisecond)
	start := time.Now()
	err := prober(t, ctl).Probe(ctx, hc)
	if err == nil || !strings.Contains(err.Error(), "timed out after 500ms") {
		t.Fatalf("hanging check: %v; want a timeout", err)
	}
	// Bounds a hang only: the kill and delete take a few runc calls.
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("a check with a 500ms timeout took %v", took)
	}
	f.noChecksLeft(t, ctx, ctl)
	// The container is unharmed.
	if err := prober(t, ctl).Probe(ctx, check("CMD", "/echo", "health")); err != nil {
		t.Errorf("check after the timeout: %v", err)
	}
}

// TestProbeCancelled returns when the caller gives up, killing the check.
func TestProbeCancelled(t *testing.T) {
	f, ctx, ctl := runningEcho(t)
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := prober(t, ctl).Probe(pctx, check("CMD", "/echo", "sleep", "1h")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled check: %v; want the context's error", err)
	}
	f.noChecksLeft(t, ctx, ctl)
}

// TestProbeWithoutProcess fails, rather than hangs, once the container's
// process is gone.
func TestProbeWithoutProcess(t *testing.T) {
	_, ctx, ctl := runningEcho(t, "ECHO_CRASH_AFTER=0s")
	exitCode(t, ctl.Wait(ctx))
	if err := prober(t, ctl).Probe(ctx, check("CMD", "/echo", "health")); err == nil {
		t.Fatal("a check of an ended container passed")
	}
}

func TestProbeOutput(t *testing.T) {
	for _, tc := range []struct {
		writes []string
		want   string
	}{
		{nil, "(no output)"},
		{[]string{" \n"}, "(no output)"},
		{[]string{"starting\n", "echo: GET /healthz: 503\n"}, "starting; echo: GET /healthz: 503"},
		{[]string{"no newline", "\n\n  indented  \n"}, "no newline; indented"},
		{[]string{strings.Repeat("x", maxProbeOutput), "cut"}, strings.Repeat("x", maxProbeOutput)},
	} {
		var o probeOutput
		for _, w := range tc.writes {
			if n, err := o.Write([]byte(w)); n != len(w) || err != nil {
				t.Fatalf("Write = %d, %v; a full buffer must not fail the check's process", n, err)
			}
		}
		if got := o.String(); got != tc.want {
			t.Errorf("writes %q: %q, want %q", tc.writes, got, tc.want)
		}
	}
}

// FuzzImageHealthcheck feeds image configs, which come from registries
// and tarballs, through what the node makes of their HEALTHCHECK: it may
// refuse them, never panic, and what it accepts is a check with every
// timing set and a test the node can run or refuse.
func FuzzImageHealthcheck(f *testing.F) {
	for _, s := range []string{
		`{"config":{"Healthcheck":{"Test":["CMD","/check"],"Interval":-5,"Retries":-2}}}`,
		`{"config":{"Healthcheck":{"Test":["CMD-SHELL"]}}}`,
		`{"config":{"Healthcheck":{"Test":["NONE","x"]}}}`,
		`{"config":{"Healthcheck":{"Test":[],"Timeout":9223372036854775807}}}`,
		`{"config":{"Healthcheck":null}}`,
		`[]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, config string) {
		fromImage, err := parseImageHealthcheck([]byte(config))
		if err != nil {
			return
		}
		hc := effectiveHealthcheck(nil, fromImage)
		if hc == nil {
			return
		}
		if hc.GetInterval().AsDuration() <= 0 || hc.GetTimeout().AsDuration() <= 0 || hc.GetStartPeriod().AsDuration() < 0 || hc.GetRetries() <= 0 {
			t.Errorf("effective check %v has a timing the node cannot keep", hc)
		}
		if argv, err := probeArgs(hc.GetTest()); err == nil && len(argv) == 0 {
			t.Errorf("test %q runs nothing", hc.GetTest())
		}
	})
}
