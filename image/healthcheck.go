package image

import (
	"encoding/json"
	"fmt"
	"time"
)

// Healthcheck is a Dockerfile's HEALTHCHECK as Docker stores it in an
// image config (config.Healthcheck): Test in Docker's forms (["CMD", exe,
// args...], ["CMD-SHELL", command], ["NONE"]), durations in nanoseconds,
// zero meaning unset. The OCI image config has no such field; builders
// (docker build, buildah) write Docker's, and runtimes that honour a
// HEALTHCHECK read it from there.
type Healthcheck struct {
	Test        []string      `json:"Test,omitempty"`
	Interval    time.Duration `json:"Interval,omitempty"`
	Timeout     time.Duration `json:"Timeout,omitempty"`
	StartPeriod time.Duration `json:"StartPeriod,omitempty"`
	Retries     int           `json:"Retries,omitempty"`
}

// ConfigHealthcheck reads the HEALTHCHECK of an image config, the JSON
// blob an image manifest's config names; nil when it has none.
func ConfigHealthcheck(config []byte) (*Healthcheck, error) {
	var c struct {
		Config struct {
			Healthcheck *Healthcheck `json:"Healthcheck"`
		} `json:"config"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("decode image config: %w", err)
	}
	return c.Config.Healthcheck, nil
}
