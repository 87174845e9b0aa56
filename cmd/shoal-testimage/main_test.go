package main

import (
	"context"
	"testing"
)

func TestRunRejectsBadUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"push"}},
		{"build without output", []string{"build"}},
		{"build with stray argument", []string{"build", "-o", "x.tar", "extra"}},
		{"import without file", []string{"import"}},
		{"import with two files", []string{"import", "a.tar", "b.tar"}},
		{"unknown flag", []string{"build", "--color"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := run(context.Background(), tt.args); err == nil {
				t.Errorf("run(%q) succeeded", tt.args)
			}
		})
	}
}
