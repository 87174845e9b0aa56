package ctl

import (
	"fmt"
	"strings"
	"time"
)

// humanDuration says how long d is the way people say it, coarsening as it
// grows, as Docker's tables do ("3 seconds", "About an hour", "2 days").
func humanDuration(d time.Duration) string {
	switch s := int64(d / time.Second); {
	case s < 1:
		return "Less than a second"
	case s == 1:
		return "1 second"
	case s < 60:
		return fmt.Sprintf("%d seconds", s)
	}
	switch m := int64(d / time.Minute); {
	case m == 1:
		return "About a minute"
	case m < 60:
		return fmt.Sprintf("%d minutes", m)
	}
	h := int64(d.Round(time.Hour) / time.Hour)
	const day, week, month, year = 24, 24 * 7, 24 * 30, 24 * 365
	switch {
	case h == 1:
		return "About an hour"
	case h < 2*day:
		return fmt.Sprintf("%d hours", h)
	case h < 2*week:
		return fmt.Sprintf("%d days", h/day)
	case h < 2*month:
		return fmt.Sprintf("%d weeks", h/week)
	case h < 2*year:
		return fmt.Sprintf("%d months", h/month)
	}
	return fmt.Sprintf("%d years", h/year)
}

// since is "<what> <duration> ago", or just what when the time is unknown.
func since(what string, t time.Time, now time.Time) string {
	if t.IsZero() {
		return what
	}
	d := now.Sub(t)
	if d < 0 {
		// Another node's clock is ahead of ours; "Less than a second"
		// is closer to the truth than a negative age.
		d = 0
	}
	return what + " " + strings.ToLower(humanDuration(d)) + " ago"
}
