package seal

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/hkdf"
)

// Why XChaCha20-Poly1305 (golang.org/x/crypto): its 192-bit nonces can be
// drawn at random for every value with no limit on values per key that a
// busy raft log would approach (AES-GCM's 96-bit random nonces allow about
// 2^32 before a collision must be feared, and a counter would have to
// survive crashes); it is constant-time in software; and it takes
// associated data, which nacl/secretbox does not.

const (
	// KeySize is the size of every key a Sealer takes.
	KeySize = chacha20poly1305.KeySize
	// version is the first byte of every sealed value, for a future
	// change of cipher.
	version = 1
	// Overhead is what sealing adds to a value.
	Overhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
)

// ErrOpen: a value does not open with the key and associated data given.
// The cipher cannot tell a wrong key from damaged bytes.
var ErrOpen = errors.New("cannot be decrypted (wrong key, or damaged)")

// NewKey returns a fresh random key.
func NewKey() []byte {
	k := make([]byte, KeySize)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("read random key: %v", err)) // crypto/rand does not fail on Linux
	}
	return k
}

// DeriveKey derives a key from secret with HKDF-SHA256 (no salt) for the
// purpose info names, so that one secret yields independent keys for
// different uses. secret must hold a key's worth of entropy (a private
// key, another key): HKDF does not stretch a password.
func DeriveKey(secret []byte, info string) []byte {
	k := make([]byte, KeySize)
	if _, err := io.ReadFull(hkdf.New(sha256.New, secret, nil, []byte(info)), k); err != nil {
		panic(fmt.Sprintf("hkdf: %v", err)) // only past 255 hashes of output
	}
	return k
}

// Sealer seals and opens values with one key.
type Sealer struct {
	key []byte
}

// New returns a Sealer for key (KeySize bytes).
func New(key []byte) Sealer { return Sealer{key: key} }

// Seal encrypts plain, bound to ad, which Open must be given again.
func (s Sealer) Seal(plain, ad []byte) []byte {
	aead, err := chacha20poly1305.NewX(s.key)
	if err != nil {
		panic(fmt.Sprintf("xchacha20poly1305: %v", err)) // the key size is fixed
	}
	out := make([]byte, 1+aead.NonceSize(), Overhead+len(plain))
	out[0] = version
	if _, err := rand.Read(out[1:]); err != nil {
		panic(fmt.Sprintf("read random nonce: %v", err))
	}
	return aead.Seal(out, out[1:], plain, ad)
}

// Open decrypts what Seal sealed with the same key and ad, or fails with
// ErrOpen.
func (s Sealer) Open(sealed, ad []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(s.key)
	if err != nil {
		return nil, fmt.Errorf("xchacha20poly1305: %w", err)
	}
	if !LooksSealed(sealed) {
		return nil, ErrOpen
	}
	nonce := sealed[1 : 1+aead.NonceSize()]
	plain, err := aead.Open(nil, nonce, sealed[1+aead.NonceSize():], ad)
	if err != nil {
		return nil, ErrOpen
	}
	return plain, nil
}

// LooksSealed tells a sealed value from a plaintext protobuf message, for
// reading data written before it was sealed: no message starts with the
// byte of field number 0, which is what the version byte reads as.
func LooksSealed(b []byte) bool {
	return len(b) >= Overhead && b[0] == version
}
