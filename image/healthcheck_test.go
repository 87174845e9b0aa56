package image

import (
	"reflect"
	"testing"
	"time"
)

func TestConfigHealthcheck(t *testing.T) {
	tests := []struct {
		name, config string
		want         *Healthcheck
		wantErr      bool
	}{
		{"none", `{"config":{"Entrypoint":["/echo"]}}`, nil, false},
		{"no config", `{"architecture":"amd64"}`, nil, false},
		{"docker's", `{"config":{"Healthcheck":{"Test":["CMD-SHELL","curl -f http://localhost/"],"Interval":5000000000,"Timeout":3000000000,"StartPeriod":10000000000,"Retries":2}}}`,
			&Healthcheck{Test: []string{"CMD-SHELL", "curl -f http://localhost/"}, Interval: 5 * time.Second, Timeout: 3 * time.Second, StartPeriod: 10 * time.Second, Retries: 2}, false},
		{"HEALTHCHECK NONE", `{"config":{"Healthcheck":{"Test":["NONE"]}}}`, &Healthcheck{Test: []string{"NONE"}}, false},
		{"broken", `{"config":`, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ConfigHealthcheck([]byte(tc.config))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
