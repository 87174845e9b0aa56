package lab

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	gw, nodes, err := Plan(Config{Managers: 2, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	nodes[0].PID = 4242
	want := state{
		Version:           stateVersion,
		Subnet:            netip.MustParsePrefix(DefaultSubnet),
		Gateway:           gw,
		Shoald:            "/usr/local/bin/shoald",
		ShoaldArgs:        []string{"--log-level", "debug"},
		ContainerdAddress: DefaultContainerd,
		Listen:            true,
		Images:            []string{"/tmp/echo.tar"},
		Nodes:             nodes,
	}
	path := filepath.Join(t.TempDir(), "run", "lab.json")
	if err := writeState(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, want)
	}
	// Nothing but the file itself is left in the directory.
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only lab.json", len(entries))
	}
}

func TestReadStateErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := readState(filepath.Join(dir, "missing.json")); !errors.Is(err, ErrNotUp) {
		t.Errorf("missing file: err = %v, want ErrNotUp", err)
	}
	tests := []struct {
		name, content, errMatch string
	}{
		{"garbage", "{not json", "lab down"},
		{"other version", `{"version": 99}`, "version 99"},
		{"no version", `{"nodes": []}`, "version 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.name+".json")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := readState(path)
			if err == nil || !strings.Contains(err.Error(), tt.errMatch) {
				t.Fatalf("err = %v, want one containing %q", err, tt.errMatch)
			}
		})
	}
}

func TestContextFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "context")
	if got, err := readContext(path); err != nil || len(got) != 0 {
		t.Fatalf("missing context = %q, %v; want empty", got, err)
	}
	managers := []string{"/run/shoal-lab/manager1.sock", "/run/shoal-lab/manager2.sock"}
	if err := writeContext(path, managers); err != nil {
		t.Fatal(err)
	}
	if got, err := readContext(path); err != nil || !slices.Equal(got, managers) {
		t.Fatalf("context = %q, %v", got, err)
	}
	// A shoalctl that knows one socket reads the first line.
	if b, err := os.ReadFile(path); err != nil || !strings.HasPrefix(string(b), managers[0]+"\n") {
		t.Errorf("context file = %q, %v; want manager1's socket on the first line", b, err)
	}
	tests := []struct {
		content string
		want    []string
	}{
		{"\n  /a.sock  \n/b.sock\n", []string{"/a.sock", "/b.sock"}},
		{"/a.sock", []string{"/a.sock"}},
		{"", nil},
		{"\n\n", nil},
	}
	for _, tt := range tests {
		if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := readContext(path); err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("context of %q = %q, %v; want %q", tt.content, got, err, tt.want)
		}
	}
}
