package seal

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	key, other := NewKey(), NewKey()
	plain, ad := []byte("SECRET=hunter2"), []byte("shoal/test")
	sealed := New(key).Seal(plain, ad)
	if bytes.Contains(sealed, plain) {
		t.Fatalf("sealed value holds the plaintext")
	}
	if len(sealed) != len(plain)+Overhead || !LooksSealed(sealed) {
		t.Fatalf("sealed value is %d bytes (LooksSealed %v), want %d", len(sealed), LooksSealed(sealed), len(plain)+Overhead)
	}
	got, err := New(key).Open(sealed, ad)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v; want %q", got, err, plain)
	}
	flipped := bytes.Clone(sealed)
	flipped[len(flipped)-1] ^= 1
	for name, tc := range map[string]struct {
		key, sealed, ad []byte
	}{
		"other key":       {other, sealed, ad},
		"other ad":        {key, sealed, []byte("shoal/elsewhere")},
		"flipped byte":    {key, flipped, ad},
		"truncated":       {key, sealed[:Overhead-1], ad},
		"plaintext":       {key, append([]byte{0x12}, sealed[1:]...), ad},
		"unknown version": {key, append([]byte{2}, sealed[1:]...), ad},
	} {
		if _, err := New(tc.key).Open(tc.sealed, tc.ad); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: Open err = %v, want ErrOpen", name, err)
		}
	}
}

func TestDeriveKey(t *testing.T) {
	// RFC 5869, test case 3 (no salt, no info), first 32 bytes.
	ikm := bytes.Repeat([]byte{0x0b}, 22)
	want := "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
	if got := hex.EncodeToString(DeriveKey(ikm, "")); got != want {
		t.Fatalf("DeriveKey = %s, want %s", got, want)
	}
	a, b := DeriveKey(ikm, "shoal/a"), DeriveKey(ikm, "shoal/b")
	if len(a) != KeySize || bytes.Equal(a, b) {
		t.Fatalf("keys for two purposes: %x and %x, want two different %d-byte keys", a, b, KeySize)
	}
	if !bytes.Equal(a, DeriveKey(ikm, "shoal/a")) {
		t.Fatalf("DeriveKey is not deterministic")
	}
}
