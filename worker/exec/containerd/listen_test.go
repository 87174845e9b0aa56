package containerd

import "testing"

func TestTCPListens(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	tests := []struct {
		name  string
		table string
		want  bool
	}{
		{"no sockets", header, false},
		{"a listener on port 80", header + "   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n", true},
		{"only an established connection", header + "   0: 0100000A:0050 0200000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n", false},
		{"a listener after others", header +
			"   0: 0100000A:0050 0200000A:D431 06 00000000:00000000 03:00000ABC 00000000     0        0 0 3 0000000000000000\n" +
			"   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12347 1 0000000000000000 100 0 0 10 0\n", true},
		{"empty", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tcpListens([]byte(tt.table)); got != tt.want {
				t.Errorf("tcpListens = %v, want %v", got, tt.want)
			}
		})
	}
}
