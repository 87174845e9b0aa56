package ctl

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// Health check flags, with Docker's names.
const (
	flagHealthCmd         = "health-cmd"
	flagHealthInterval    = "health-interval"
	flagHealthTimeout     = "health-timeout"
	flagHealthRetries     = "health-retries"
	flagHealthStartPeriod = "health-start-period"
	flagNoHealthcheck     = "no-healthcheck"
)

// healthFlags are the health check flags of a service command. They say
// only what the user gave: the rest comes from the image's HEALTHCHECK or
// Docker's defaults, merged on the node.
type healthFlags struct {
	fs          *pflag.FlagSet
	cmd         string
	interval    time.Duration
	timeout     time.Duration
	startPeriod time.Duration
	retries     int
	none        bool
}

// addHealthFlags registers the health check flags on fs.
func addHealthFlags(fs *pflag.FlagSet) *healthFlags {
	f := &healthFlags{fs: fs}
	fs.StringVar(&f.cmd, flagHealthCmd, "", "health check command, run in the container with /bin/sh -c (default: the image's HEALTHCHECK); a task serves only once it passes")
	fs.DurationVar(&f.interval, flagHealthInterval, 0, "time between two health checks, the first included (default: the image's, else 30s)")
	fs.DurationVar(&f.timeout, flagHealthTimeout, 0, "longest a health check may run before it counts as failed (default: the image's, else 30s)")
	fs.IntVar(&f.retries, flagHealthRetries, 0, "failed health checks in a row that make a task unhealthy, which replaces it (default: the image's, else 3)")
	fs.DurationVar(&f.startPeriod, flagHealthStartPeriod, 0, "time a task has to start, during which failed health checks do not count (default: the image's, else 0s)")
	fs.BoolVar(&f.none, flagNoHealthcheck, false, "disable the image's HEALTHCHECK")
	return f
}

// changed reports whether any of the named flags was given.
func (f *healthFlags) changed(names ...string) bool {
	for _, n := range names {
		if f.fs.Changed(n) {
			return true
		}
	}
	return false
}

// given reports whether any health check flag was given.
func (f *healthFlags) given() bool {
	return f.changed(flagHealthCmd, flagHealthInterval, flagHealthTimeout, flagHealthRetries, flagHealthStartPeriod, flagNoHealthcheck)
}

// apply writes the given flags into spec's health check, or says what is
// wrong with them and changes nothing. On a spec that has a health check
// already (an update), flags not given keep its values, as in `docker
// service update`.
func (f *healthFlags) apply(spec *api.ServiceSpec) error {
	tuning := []string{flagHealthCmd, flagHealthInterval, flagHealthTimeout, flagHealthRetries, flagHealthStartPeriod}
	if !f.changed(append(tuning, flagNoHealthcheck)...) {
		return nil
	}
	if f.none && f.changed(tuning...) {
		return fmt.Errorf("--%s cannot be used with --health-* options: it disables the health check they configure", flagNoHealthcheck)
	}
	for _, d := range []struct {
		flag  string
		value time.Duration
	}{
		{flagHealthInterval, f.interval},
		{flagHealthTimeout, f.timeout},
	} {
		if f.changed(d.flag) && d.value <= 0 {
			return fmt.Errorf("--%s must be positive, got %s (leave it out for the image's value or the default)", d.flag, d.value)
		}
	}
	if f.changed(flagHealthStartPeriod) && f.startPeriod < 0 {
		return fmt.Errorf("--%s must not be negative, got %s", flagHealthStartPeriod, f.startPeriod)
	}
	if f.changed(flagHealthRetries) && (f.retries < 0 || f.retries > math.MaxInt32) {
		return fmt.Errorf("--%s must be 0 or more, got %d (0 means the image's value or the default, 3)", flagHealthRetries, f.retries)
	}

	if spec.Task == nil {
		spec.Task = &api.TaskSpec{}
	}
	if spec.Task.Container == nil {
		spec.Task.Container = &api.ContainerSpec{}
	}
	c := spec.Task.Container
	if f.none {
		c.Healthcheck = &api.HealthConfig{Test: []string{api.HealthTestNone}}
		return nil
	}
	hc := &api.HealthConfig{}
	if c.Healthcheck != nil {
		hc = proto.Clone(c.Healthcheck).(*api.HealthConfig)
	}
	if test := hc.GetTest(); len(test) > 0 && test[0] == api.HealthTestNone {
		// Tuning a disabled check enables the image's again.
		hc.Test = nil
	}
	if f.changed(flagHealthCmd) {
		hc.Test = nil // "" asks for the image's command
		if f.cmd != "" {
			hc.Test = []string{api.HealthTestShell, f.cmd}
		}
	}
	if f.changed(flagHealthInterval) {
		hc.Interval = durationpb.New(f.interval)
	}
	if f.changed(flagHealthTimeout) {
		hc.Timeout = durationpb.New(f.timeout)
	}
	if f.changed(flagHealthStartPeriod) {
		hc.StartPeriod = durationpb.New(f.startPeriod)
	}
	if f.changed(flagHealthRetries) {
		hc.Retries = int32(f.retries)
	}
	c.Healthcheck = hc
	if proto.Size(hc) == 0 {
		c.Healthcheck = nil
	}
	return nil
}

// prettyHealthcheck is the health check part of `service inspect
// --pretty`: what the spec says, the rest being the image's or the
// defaults.
func prettyHealthcheck(hc *api.HealthConfig, section func(string), line func(int, string, any), optional func(int, string, string)) {
	if hc == nil {
		return
	}
	section("Healthcheck")
	switch test := hc.GetTest(); {
	case len(test) == 0:
		line(1, "Test", "the image's")
	case test[0] == api.HealthTestNone:
		line(1, "Test", "NONE (the image's is disabled)")
	default:
		line(1, "Test", strings.Join(test, " "))
	}
	optional(1, "Interval", durationText(hc.GetInterval()))
	optional(1, "Timeout", durationText(hc.GetTimeout()))
	optional(1, "Start period", durationText(hc.GetStartPeriod()))
	if hc.GetRetries() > 0 {
		line(1, "Retries", hc.GetRetries())
	}
}
