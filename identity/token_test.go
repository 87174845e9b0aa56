package identity_test

import (
	. "github.com/shoal-project/shoal/identity"

	"strings"
	"testing"
)

const testDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestTokenRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 50; i++ {
		s, err := GenerateToken(testDigest)
		if err != nil {
			t.Fatal(err)
		}
		if want := len("SHOAL-1-") + 64 + 1 + SecretLen; len(s) != want {
			t.Fatalf("token %q has length %d, want %d", s, len(s), want)
		}
		tok, err := ParseToken(s)
		if err != nil {
			t.Fatalf("parse generated token: %v", err)
		}
		if tok.Version != 1 || tok.Digest != testDigest || len(tok.Secret) != SecretLen {
			t.Fatalf("parsed %+v", tok)
		}
		if tok.String() != s {
			t.Fatalf("String() = %q, want %q", tok.String(), s)
		}
		if seen[tok.Secret] {
			t.Fatal("secret repeated")
		}
		seen[tok.Secret] = true
	}
	for _, bad := range []string{"", "sha256:abc", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "sha256:" + strings.Repeat("G", 64)} {
		if _, err := GenerateToken(bad); err == nil {
			t.Errorf("token generated for digest %q", bad)
		}
	}
}

func TestParseTokenMalformed(t *testing.T) {
	hex := strings.TrimPrefix(testDigest, "sha256:")
	secret := "0123456789abcdefghijklmno"
	good := "SHOAL-1-" + hex + "-" + secret
	if _, err := ParseToken(good); err != nil {
		t.Fatalf("good token refused: %v", err)
	}
	tests := []struct {
		name, token, want string
	}{
		{"empty", "", "malformed: want SHOAL-1-<CA digest>-<secret>"},
		{"swarm token", "SWMTKN-1-" + hex + "-" + secret, "malformed"},
		{"lower-case prefix", "shoal-1-" + hex + "-" + secret, "malformed"},
		{"missing secret", "SHOAL-1-" + hex, "malformed"},
		{"extra part", good + "-x", "malformed"},
		{"leading space", " " + good, "malformed"},
		{"trailing newline", good + "\n", "secret"},
		{"version 2", "SHOAL-2-" + hex + "-" + secret, "version 2 is not supported"},
		{"version 01", "SHOAL-01-" + hex + "-" + secret, "malformed"},
		{"version letter", "SHOAL-v-" + hex + "-" + secret, "malformed"},
		{"huge version", "SHOAL-99999999999999999999-" + hex + "-" + secret, "malformed"},
		{"short digest", "SHOAL-1-" + hex[:63] + "-" + secret, "CA digest"},
		{"upper-case digest", "SHOAL-1-" + strings.ToUpper(hex) + "-" + secret, "CA digest"},
		{"digest with prefix", "SHOAL-1-sha256:" + hex + "-" + secret, "CA digest"},
		{"short secret", "SHOAL-1-" + hex + "-" + secret[:24], "secret"},
		{"long secret", "SHOAL-1-" + hex + "-" + secret + "p", "secret"},
		{"upper-case secret", "SHOAL-1-" + hex + "-" + strings.ToUpper(secret), "secret"},
		{"punctuation in secret", "SHOAL-1-" + hex + "-" + secret[:24] + "_", "secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseToken(tt.token)
			if err == nil {
				t.Fatal("malformed token accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err %q, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret[:10]) {
				t.Errorf("error %q echoes the secret", err)
			}
		})
	}
}

func TestTokenMatches(t *testing.T) {
	a, _ := GenerateToken(testDigest)
	b, _ := GenerateToken(testDigest)
	tests := []struct {
		presented, stored string
		want              bool
	}{
		{a, a, true},
		{a, b, false},
		{a[:len(a)-1], a, false},
		{a + "x", a, false},
		{"", "", false}, // no stored token: nothing matches
		{a, "", false},
	}
	for _, tt := range tests {
		if got := TokenMatches(tt.presented, tt.stored); got != tt.want {
			t.Errorf("TokenMatches(%q, %q) = %v", tt.presented, tt.stored, got)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	good, _ := GenerateToken(testDigest)
	f.Add(good)
	f.Add("")
	f.Add("SHOAL-1--")
	f.Add("SHOAL-2-" + strings.TrimPrefix(testDigest, "sha256:") + "-0123456789abcdefghijklmno")
	f.Add("SHOAL-1-" + strings.Repeat("a", 64) + "-" + strings.Repeat("z", 25))
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			// The error must not carry the secret part of what was given
			// (a secret-like tail; short ones may match words by chance).
			tail := s[strings.LastIndexByte(s, '-')+1:]
			if len(tail) >= 12 && strings.Trim(tail, "0123456789abcdefghijklmnopqrstuvwxyz") == "" && strings.Contains(err.Error(), tail) {
				t.Fatalf("error %q echoes the secret", err)
			}
			return
		}
		if tok.String() != s {
			t.Fatalf("parsed %q as %+v, which formats as %q", s, tok, tok.String())
		}
		if !strings.HasPrefix(tok.Digest, "sha256:") || len(tok.Digest) != 71 || len(tok.Secret) != SecretLen {
			t.Fatalf("parsed %q as %+v", s, tok)
		}
	})
}
