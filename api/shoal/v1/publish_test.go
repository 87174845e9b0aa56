package shoalv1

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

func TestParsePublish(t *testing.T) {
	tests := []struct {
		in      string
		want    *PortConfig
		wantErr string
	}{
		{in: "8080:80", want: &PortConfig{Protocol: "tcp", Published: 8080, Target: 80, Mode: "ingress"}},
		{in: "8080:80/udp", want: &PortConfig{Protocol: "udp", Published: 8080, Target: 80, Mode: "ingress"}},
		{in: "8080:80/TCP", want: &PortConfig{Protocol: "tcp", Published: 8080, Target: 80, Mode: "ingress"}},
		{in: "80", want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "ingress"}},
		{in: "53/udp", want: &PortConfig{Protocol: "udp", Target: 53, Mode: "ingress"}},
		{in: "published=5353,target=53,protocol=udp", want: &PortConfig{Protocol: "udp", Published: 5353, Target: 53, Mode: "ingress"}},
		{in: "mode=host,published=9000,target=80", want: &PortConfig{Protocol: "tcp", Published: 9000, Target: 80, Mode: "host"}},
		{in: "target=80", want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "ingress"}},
		{in: " target = 80 , mode = Host ", want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "host"}},
		{in: "target=80,traffic=local", want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "ingress", Traffic: "local"}},
		{in: "traffic=Cluster,published=8080,target=80,mode=ingress", want: &PortConfig{Protocol: "tcp", Published: 8080, Target: 80, Mode: "ingress", Traffic: "cluster"}},

		{in: "", wantErr: `target port "": want a number from 1 to 65535`},
		{in: "0", wantErr: `target port "0": want a number`},
		{in: "65536", wantErr: `target port "65536"`},
		{in: "http", wantErr: `target port "http"`},
		{in: "8080:", wantErr: `target port ""`},
		{in: ":80", wantErr: `published port ""`},
		{in: "8080:80/sctp", wantErr: `protocol "sctp": want tcp or udp`},
		{in: "8080:80/", wantErr: `protocol "": want tcp or udp`},
		{in: "127.0.0.1:8080:80", wantErr: "publishing on one host address is not supported"},
		{in: "8000-8010:80-90", wantErr: "port ranges are not supported"},
		{in: "published=8080", wantErr: "target is required"},
		{in: "target=80,target=81", wantErr: "target given twice"},
		{in: "target=80,name=web", wantErr: `unknown key "name"`},
		{in: "target=80,mode=global", wantErr: `mode "global": want ingress or host`},
		{in: "target=80,protocol=icmp", wantErr: `protocol "icmp"`},
		{in: "target=80,host", wantErr: `field "host" is not KEY=VALUE`},
		{in: "target=", wantErr: `target port ""`},
		{in: "published=0,target=80", wantErr: `published port "0"`},
		{in: "target=80,traffic=nearby", wantErr: `traffic "nearby": want cluster or local`},
		{in: "target=80,traffic=", wantErr: `traffic "": want cluster or local`},
		{in: "target=80,mode=host,traffic=local", wantErr: "traffic=local is only valid with mode=ingress"},
		{in: "traffic=cluster,mode=host,target=80", wantErr: "traffic=cluster is only valid with mode=ingress"},
		{in: "target=80,traffic=local,traffic=cluster", wantErr: "traffic given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublish(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParsePublish(%q) = %+v, %v; want ErrInvalid containing %q", tt.in, got, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.in) {
					t.Fatalf("error %q does not quote the input", err)
				}
				return
			}
			if err != nil || !proto.Equal(got, tt.want) {
				t.Fatalf("ParsePublish(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatPublishRoundTrips(t *testing.T) {
	for _, p := range []*PortConfig{
		{Protocol: "tcp", Target: 80, Mode: "ingress"},
		{Protocol: "udp", Published: 5353, Target: 53, Mode: "host"},
		{Protocol: "tcp", Published: 8080, Target: 80, Mode: "ingress", Traffic: "local"},
	} {
		got, err := ParsePublish(FormatPublish(p))
		if err != nil || !proto.Equal(got, p) {
			t.Errorf("ParsePublish(%q) = %+v, %v; want %+v", FormatPublish(p), got, err, p)
		}
	}
}

func TestNormalizePort(t *testing.T) {
	tests := []struct {
		in      *PortConfig
		want    *PortConfig
		wantErr string
	}{
		{in: &PortConfig{Target: 80}, want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "ingress"}},
		{in: &PortConfig{Protocol: "UDP", Target: 53, Published: 5353, Mode: "Host"}, want: &PortConfig{Protocol: "udp", Target: 53, Published: 5353, Mode: "host"}},
		{in: &PortConfig{Target: 80, Traffic: "Local"}, want: &PortConfig{Protocol: "tcp", Target: 80, Mode: "ingress", Traffic: "local"}},
		{in: &PortConfig{Published: 9000}, wantErr: "port published=9000,target=0,protocol=tcp,mode=ingress: target port is required"},
		{in: &PortConfig{Target: 70000}, wantErr: "ports are 1-65535"},
		{in: &PortConfig{Target: 80, Published: 65536}, wantErr: "ports are 1-65535"},
		{in: &PortConfig{Target: 80, Protocol: "sctp"}, wantErr: `protocol "sctp": want tcp or udp`},
		{in: &PortConfig{Target: 80, Mode: "global"}, wantErr: `mode "global"`},
		{in: &PortConfig{Target: 80, Traffic: "nearby"}, wantErr: `traffic "nearby": want cluster or local`},
		{in: &PortConfig{Target: 80, Mode: "host", Traffic: "local"}, wantErr: "traffic=local is only valid with mode=ingress"},
	}
	for _, tt := range tests {
		got, err := NormalizePort(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
				t.Errorf("NormalizePort(%v) = %v, %v; want ErrInvalid containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !proto.Equal(got, tt.want) {
			t.Errorf("NormalizePort(%v) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

// FuzzParsePublish checks that ParsePublish never panics, that what it
// accepts is complete and already normal by NormalizePort's rules, and
// that its long form reads back the same.
func FuzzParsePublish(f *testing.F) {
	for _, s := range []string{"8080:80", "8080:80/udp", "80", "published=5353,target=53,protocol=udp", "mode=host,published=9000,target=80", "1.2.3.4:80:80", "a=b=c", ",,", "80/udp/tcp", "target=80,target=80", "target=80,traffic=local", "mode=host,target=80,traffic=cluster"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePublish(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParsePublish(%q): error %v does not wrap ErrInvalid", s, err)
			}
			return
		}
		if p.Target == 0 || (p.Protocol != ProtocolTCP && p.Protocol != ProtocolUDP) || (p.Mode != ModeIngress && p.Mode != ModeHost) {
			t.Fatalf("ParsePublish(%q) accepted an incomplete port %+v", s, p)
		}
		if (p.Traffic != "" && p.Traffic != TrafficCluster && p.Traffic != TrafficLocal) || (p.Traffic != "" && p.Mode != ModeIngress) {
			t.Fatalf("ParsePublish(%q) accepted traffic %q with mode %s", s, p.Traffic, p.Mode)
		}
		if n, err := NormalizePort(p); err != nil || !proto.Equal(n, p) {
			t.Fatalf("ParsePublish(%q) = %+v, which NormalizePort makes %+v, %v", s, p, n, err)
		}
		again, err := ParsePublish(FormatPublish(p))
		if err != nil || !proto.Equal(again, p) {
			t.Fatalf("ParsePublish(%q) = %+v, whose long form %q reads back as %+v, %v", s, p, FormatPublish(p), again, err)
		}
	})
}
