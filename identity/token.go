package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"

	api "github.com/shoal-project/shoal/api/shoal/v1"
)

// A join token is SHOAL-<version>-<64 hex of the CA digest>-<secret>. The
// digest lets a joining node check the CA it downloads; the secret, 128
// random bits in base 36, is what the managers check.
const (
	tokenPrefix  = "SHOAL"
	tokenVersion = 1
	// secretLen is 128 bits in base 36 (36^25 > 2^128), zero-padded so
	// every token has the same length.
	secretLen    = 25
	digestPrefix = "sha256:"
	digestHexLen = 64
)

// errMalformed never includes the token: it is a secret, and error
// messages end up in logs.
var errMalformed = errors.New("join token: malformed: want SHOAL-1-<CA digest>-<secret>")

// Token is a parsed join token.
type Token struct {
	Version int
	// Digest is the CA certificate's digest, "sha256:<hex>".
	Digest string
	Secret string
}

// String formats the token as users paste it.
func (t Token) String() string {
	return fmt.Sprintf("%s-%d-%s-%s", tokenPrefix, t.Version, strings.TrimPrefix(t.Digest, digestPrefix), t.Secret)
}

// GenerateToken makes a new token for the CA with this digest.
func GenerateToken(caDigest string) (string, error) {
	hexDigest, ok := strings.CutPrefix(caDigest, digestPrefix)
	if !ok || !isLowerHex(hexDigest, digestHexLen) {
		return "", fmt.Errorf("generate join token: CA digest %q is not sha256:<64 hex>", caDigest)
	}
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return "", fmt.Errorf("generate join token secret: %w", err)
	}
	secret := n.Text(36)
	secret = strings.Repeat("0", secretLen-len(secret)) + secret
	return Token{Version: tokenVersion, Digest: caDigest, Secret: secret}.String(), nil
}

// NewJoinTokens makes a worker and a manager token for a new cluster.
func NewJoinTokens(caDigest string) (*api.JoinTokens, error) {
	w, err := GenerateToken(caDigest)
	if err != nil {
		return nil, err
	}
	m, err := GenerateToken(caDigest)
	if err != nil {
		return nil, err
	}
	return &api.JoinTokens{Worker: w, Manager: m}, nil
}

// ParseToken parses a join token strictly. Its errors never echo the
// token.
func ParseToken(s string) (Token, error) {
	parts := strings.Split(s, "-")
	if len(parts) != 4 || parts[0] != tokenPrefix {
		return Token{}, errMalformed
	}
	v := parts[1]
	if v == "" || len(v) > 3 || strings.Trim(v, "0123456789") != "" || (len(v) > 1 && v[0] == '0') {
		return Token{}, errMalformed
	}
	version, _ := strconv.Atoi(v)
	if version != tokenVersion {
		return Token{}, fmt.Errorf("join token: version %d is not supported: this shoal understands SHOAL-%d tokens", version, tokenVersion)
	}
	if !isLowerHex(parts[2], digestHexLen) {
		return Token{}, fmt.Errorf("join token: malformed CA digest: want %d lower-case hex digits after SHOAL-1-", digestHexLen)
	}
	if len(parts[3]) != secretLen || strings.Trim(parts[3], "0123456789abcdefghijklmnopqrstuvwxyz") != "" {
		return Token{}, fmt.Errorf("join token: malformed secret: want %d characters of 0-9 and a-z at the end", secretLen)
	}
	return Token{Version: version, Digest: digestPrefix + parts[2], Secret: parts[3]}, nil
}

// TokenMatches compares a presented token with a stored one in time that
// does not depend on where they differ (or on their lengths: both are
// hashed first).
func TokenMatches(presented, stored string) bool {
	if stored == "" {
		return false
	}
	a := sha256.Sum256([]byte(presented))
	b := sha256.Sum256([]byte(stored))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func isLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
