package lb

import (
	"net/netip"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	be := func(s string) Backend {
		ap := netip.MustParseAddrPort(s)
		return Backend{Addr: ap.Addr(), Port: ap.Port()}
	}
	ok := Frontend{Name: "svc:a:8080/tcp", Protocol: TCP, Port: 8080, Backends: []Backend{be("10.0.0.2:80"), be("10.0.0.3:80")}, Masquerade: true}
	vip := Frontend{Name: "vip:a:80/tcp", Protocol: TCP, Port: 80, VIP: netip.MustParseAddr("10.0.1.2"), Backends: []Backend{be("10.0.0.2:80")}}
	anyPort := Frontend{Name: "vip:a:*/tcp", Protocol: TCP, VIP: netip.MustParseAddr("10.0.1.2"), Backends: []Backend{{Addr: netip.MustParseAddr("10.0.0.2")}, {Addr: netip.MustParseAddr("10.0.0.3")}}}
	with := func(f Frontend, mod func(*Frontend)) Frontend { mod(&f); return f }
	tests := []struct {
		name string
		s    State
		want []string // substrings of the error; none means valid
	}{
		{"empty", State{}, nil},
		{"published and vip", State{Frontends: []Frontend{ok, vip}}, nil},
		{"no backends is fine", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Backends = nil })}}, nil},
		{"same port different protocol", State{Frontends: []Frontend{ok, with(ok, func(f *Frontend) { f.Name = "u"; f.Protocol = UDP })}}, nil},
		{"duplicate name", State{Frontends: []Frontend{ok, with(ok, func(f *Frontend) { f.Port = 1 })}}, []string{`"svc:a:8080/tcp": duplicate name`}},
		{"empty name", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Name = "" })}}, []string{"frontend #0: empty name"}},
		{"port 0", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Port = 0 })}}, []string{`"svc:a:8080/tcp": port 0`}},
		{"bad protocol", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Protocol = "sctp" })}}, []string{`"svc:a:8080/tcp": unknown protocol "sctp"`}},
		{"same key twice", State{Frontends: []Frontend{ok, with(ok, func(f *Frontend) { f.Name = "other" })}}, []string{`"other": published 8080/tcp is already balanced by frontend "svc:a:8080/tcp"`}},
		{"vip family", State{Frontends: []Frontend{with(vip, func(f *Frontend) { f.Backends = []Backend{be("[fd00::2]:80")} })}}, []string{`"vip:a:80/tcp": backend [fd00::2]:80 is not in the VIP's address family`}},
		{"unspecified vip", State{Frontends: []Frontend{with(vip, func(f *Frontend) { f.VIP = netip.MustParseAddr("0.0.0.0") })}}, []string{"VIP 0.0.0.0 is not a usable address"}},
		{"backend port 0", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Backends = []Backend{be("10.0.0.2:0")} })}}, []string{`"svc:a:8080/tcp": backend 10.0.0.2 has port 0`}},
		{"backend no address", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Backends = []Backend{{Port: 80}} })}}, []string{"backend with no address"}},
		{"backend twice", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Backends = []Backend{be("10.0.0.2:80"), be("10.0.0.2:80")} })}}, []string{"backend 10.0.0.2:80 listed twice"}},
		{"mixed families", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Backends = []Backend{be("10.0.0.2:80"), be("[fd00::2]:80")} })}}, []string{"mix IPv4 and IPv6"}},
		{"any-port vip with port-keeping backends", State{Frontends: []Frontend{vip, anyPort, with(anyPort, func(f *Frontend) { f.Name = "u"; f.Protocol = UDP })}}, nil},
		{"any-port published port", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Port = 0; f.Backends = nil })}}, []string{`"svc:a:8080/tcp": port 0 (only a VIP frontend`}},
		{"any-port vip with a backend port", State{Frontends: []Frontend{with(anyPort, func(f *Frontend) { f.Backends = []Backend{be("10.0.0.2:80")} })}}, []string{`"vip:a:*/tcp": backend 10.0.0.2:80 has a port`}},
		{"any-port vip twice", State{Frontends: []Frontend{anyPort, with(anyPort, func(f *Frontend) { f.Name = "other" })}}, []string{`"other": 10.0.1.2:*/tcp is already balanced by frontend "vip:a:*/tcp"`}},
		{"all problems reported", State{Frontends: []Frontend{with(ok, func(f *Frontend) { f.Port = 0 }), with(vip, func(f *Frontend) { f.Protocol = "" })}}, []string{"port 0", `"vip:a:80/tcp": unknown protocol ""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.s)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate: nil, want error containing %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate: %v\nwant it to contain %q", err, w)
				}
			}
		})
	}
}
