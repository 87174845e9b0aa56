package shoalv1

import (
	"strings"
	"testing"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "1024", want: 1024},
		{in: "512M", want: 512 << 20},
		{in: "512m", want: 512 << 20},
		{in: "512MB", want: 512 << 20},
		{in: "512MiB", want: 512 << 20},
		{in: "512 mb", want: 512 << 20},
		{in: "1.5G", want: 3 << 29},
		{in: "1g", want: 1 << 30},
		{in: "64k", want: 64 << 10},
		{in: "2T", want: 2 << 40},
		{in: "1p", want: 1 << 50},
		{in: "100b", want: 100},
		{in: "0", want: 0},
		{in: " 8M ", want: 8 << 20},

		{in: "", wantErr: "is not a size"},
		{in: "M", wantErr: "is not a size"},
		{in: "-1", wantErr: "cannot be negative"},
		{in: "-512M", wantErr: "cannot be negative"},
		{in: "1.5.2G", wantErr: "is not a size"},
		{in: "12X", wantErr: "is not a size"},
		{in: "1e3", wantErr: "is not a size"},
		{in: "8192P", wantErr: "too large"},
		{in: "lots", wantErr: "is not a size"},
	}
	for _, tt := range tests {
		got, err := ParseBytes(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseBytes(%q) = %d, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestParseNanoCPUs(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{in: "0.5", want: 500_000_000},
		{in: "2", want: 2_000_000_000},
		{in: "1.25", want: 1_250_000_000},
		{in: ".5", want: 500_000_000},
		{in: "0.000000001", want: 1},
		{in: "0", want: 0},

		{in: "", wantErr: "not a number of CPUs"},
		{in: "-1", wantErr: "cannot be negative"},
		{in: "1/2", wantErr: "not a number of CPUs"},
		{in: "1e3", wantErr: "not a number of CPUs"},
		{in: "half", wantErr: "not a number of CPUs"},
		{in: "1.2.3", wantErr: "not a number of CPUs"},
		{in: ".", wantErr: "not a number of CPUs"},
		{in: "0.0000000001", wantErr: "too precise"},
		{in: "99999999999999999999", wantErr: "too large"},
	}
	for _, tt := range tests {
		got, err := ParseNanoCPUs(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseNanoCPUs(%q) = %d, %v; want an error saying %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseNanoCPUs(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestFormatResources(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 100: "100B", 1536: "1.5KiB", 512 << 20: "512MiB", 3 << 29: "1.5GiB", 1<<30 + 1: "1GiB"} {
		if got := FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0", 500_000_000: "0.5", 2_000_000_000: "2", 10_000_000_000: "10", 1: "0.000000001"} {
		if got := FormatNanoCPUs(n); got != want {
			t.Errorf("FormatNanoCPUs(%d) = %q, want %q", n, got, want)
		}
	}
	// What is written can be read back.
	for _, n := range []int64{1, 500_000_000, 1_250_000_000, 64_000_000_000} {
		if got, err := ParseNanoCPUs(FormatNanoCPUs(n)); err != nil || got != n {
			t.Errorf("ParseNanoCPUs(FormatNanoCPUs(%d)) = %d, %v", n, got, err)
		}
	}
}

func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"512M", "1.5G", "1024", "-1", "8192P", "1 kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseBytes(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseBytes(%q) = %d: negative without an error", s, n)
		}
	})
}

func FuzzParseNanoCPUs(f *testing.F) {
	for _, s := range []string{"0.5", "2", ".25", "-1", "1/2", "1e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseNanoCPUs(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("ParseNanoCPUs(%q) = %d: negative without an error", s, n)
		}
		if back, err := ParseNanoCPUs(FormatNanoCPUs(n)); err != nil || back != n {
			t.Fatalf("ParseNanoCPUs(%q) = %d, which formats as %q and reads back as %d, %v", s, n, FormatNanoCPUs(n), back, err)
		}
	})
}

func TestValidateModesPlacementResources(t *testing.T) {
	base := func(mutate func(s *ServiceSpec)) *ServiceSpec {
		s := &ServiceSpec{
			Name: "web",
			Task: &TaskSpec{Container: &ContainerSpec{Image: "echo"}},
			Mode: &ServiceSpec_Replicated{Replicated: &ReplicatedService{Replicas: 1}},
		}
		mutate(s)
		return s
	}
	global := func(s *ServiceSpec) { s.Mode = &ServiceSpec_Global{Global: &GlobalService{}} }
	res := func(limCPU, limMem, resCPU, resMem, pids int64) func(*ServiceSpec) {
		return func(s *ServiceSpec) {
			s.Task.Resources = &ResourceRequirements{
				Limits:       &Resources{NanoCpus: limCPU, MemoryBytes: limMem},
				Reservations: &Resources{NanoCpus: resCPU, MemoryBytes: resMem},
				PidsLimit:    pids,
			}
		}
	}
	tests := []struct {
		name    string
		mutate  func(*ServiceSpec)
		wantErr string
	}{
		{"replicated", func(*ServiceSpec) {}, ""},
		{"global", global, ""},
		{"replicated job", func(s *ServiceSpec) {
			s.Mode = &ServiceSpec_ReplicatedJob{ReplicatedJob: &ReplicatedJob{TotalCompletions: 5, MaxConcurrent: 2}}
		}, ""},
		{"global job", func(s *ServiceSpec) { s.Mode = &ServiceSpec_GlobalJob{GlobalJob: &GlobalJob{}} }, ""},
		{"no mode", func(s *ServiceSpec) { s.Mode = nil }, "mode: missing"},
		{"job without completions", func(s *ServiceSpec) {
			s.Mode = &ServiceSpec_ReplicatedJob{ReplicatedJob: &ReplicatedJob{}}
		}, "at least 1 completion"},
		{"too many completions", func(s *ServiceSpec) {
			s.Mode = &ServiceSpec_ReplicatedJob{ReplicatedJob: &ReplicatedJob{TotalCompletions: MaxReplicas + 1}}
		}, "more than the limit"},
		{"max per node on global", func(s *ServiceSpec) {
			global(s)
			s.Task.Placement = &Placement{MaxReplicasPerNode: 1}
		}, "one task per node already"},
		{"spread on global", func(s *ServiceSpec) {
			global(s)
			s.Task.Placement = &Placement{Preferences: []*PlacementPreference{{Spread: "node.labels.zone"}}}
		}, "nothing to spread"},
		{"spread over a label", func(s *ServiceSpec) {
			s.Task.Placement = &Placement{Preferences: []*PlacementPreference{{Spread: "node.labels.zone"}}}
		}, ""},
		{"spread over no label", func(s *ServiceSpec) {
			s.Task.Placement = &Placement{Preferences: []*PlacementPreference{{Spread: "node.hostname"}}}
		}, `spread "node.hostname": name a node label`},
		{"spread over an empty label", func(s *ServiceSpec) {
			s.Task.Placement = &Placement{Preferences: []*PlacementPreference{{Spread: "node.labels."}}}
		}, "name a node label"},
		{"limits and reservations", res(2*NanoCPU, 1<<30, NanoCPU/2, 512<<20, 100), ""},
		{"negative reservation", res(0, 0, 0, -1, 0), "reservations.memory_bytes: -1 is negative"},
		{"negative pids", res(0, 0, 0, 0, -5), "pids_limit: -5 is negative"},
		{"memory limit below reservation", res(0, 256<<20, 0, 512<<20, 0), "the limit 256MiB is below the reservation 512MiB"},
		{"cpu limit below reservation", res(NanoCPU/2, 0, NanoCPU, 0, 0), "the limit 0.5 CPUs is below the reservation 1 CPUs"},
		{"tiny memory limit", res(0, 1<<20, 0, 0, 0), "below the minimum of 6MiB"},
		{"tiny cpu limit", res(1000, 0, 0, 0, 0), "below the minimum of 0.01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateServiceSpec(base(tt.mutate))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateServiceSpec: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateServiceSpec = %v, want an error saying %q", err, tt.wantErr)
			}
		})
	}
}

func TestApplyModeDefaults(t *testing.T) {
	s := &ServiceSpec{
		Task: &TaskSpec{Container: &ContainerSpec{Image: "echo"}},
		Mode: &ServiceSpec_ReplicatedJob{ReplicatedJob: &ReplicatedJob{TotalCompletions: 4}},
	}
	ApplyServiceDefaults(s)
	if got := s.GetReplicatedJob().GetMaxConcurrent(); got != 4 {
		t.Errorf("max_concurrent = %d, want the total completions, 4", got)
	}
	if got := s.GetTask().GetRestart().GetCondition(); got != RestartCondition_RESTART_CONDITION_ON_FAILURE {
		t.Errorf("a job's restart condition = %v, want on-failure", got)
	}
	r := &ServiceSpec{Task: &TaskSpec{}, Mode: &ServiceSpec_Replicated{Replicated: &ReplicatedService{Replicas: 1}}}
	ApplyServiceDefaults(r)
	if got := r.GetTask().GetRestart().GetCondition(); got != RestartCondition_RESTART_CONDITION_ANY {
		t.Errorf("a replicated service's restart condition = %v, want any", got)
	}
}
