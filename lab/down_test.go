package lab

import "testing"

func TestUnescapeMount(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/var/lib/shoal-lab/m1", "/var/lib/shoal-lab/m1"},
		{`/var/lib/shoal-lab/with\040space`, "/var/lib/shoal-lab/with space"},
		{`/a\011tab\134back`, "/a\ttab\\back"},
		{`/trailing\04`, `/trailing\04`},
		{`/not\x41octal`, `/not\x41octal`},
	}
	for _, tt := range tests {
		if got := unescapeMount(tt.in); got != tt.want {
			t.Errorf("unescapeMount(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMountPointsHasRoot(t *testing.T) {
	points, err := mountPoints()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range points {
		if p == "/" {
			return
		}
	}
	t.Errorf("mount points %q lack /", points)
}
