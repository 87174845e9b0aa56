package state

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// Encryption at rest, Swarm's model: each manager seals its raft log
// entries and snapshots with a data encryption key (DEK) of its own. The
// DEK is kept in keys.json wrapped by a key encryption key (KEK). Without
// autolock the KEK sits in keys.json beside it, so the manager restarts
// unattended; with autolock the KEK is the cluster's unlock key, held only
// in memory (and in the encrypted store), and a restarted manager opens
// nothing until it is given the key (`shoald unlock`).
//
// The cipher is XChaCha20-Poly1305 (golang.org/x/crypto): an AEAD whose
// 192-bit nonces can be drawn at random for every entry without a limit on
// messages per key that a busy log would approach (AES-GCM's 96-bit random
// nonces allow about 2^32 before a collision must be feared, and a counter
// would have to survive crashes), constant-time in software, and with
// associated data, which ties each entry to its log index.

const (
	keysFile = "keys.json"
	// keySize is the size of a DEK, a KEK and an unlock key's secret.
	keySize = chacha20poly1305.KeySize
	// UnlockKeyPrefix starts every unlock key, so that a key pasted in
	// the wrong place is recognised.
	UnlockKeyPrefix = "SHOALKEY-1-"
	// sealVersion is the first byte of every sealed value, for a future
	// change of cipher.
	sealVersion = 1
	// sealOverhead is what sealing adds to a value.
	sealOverhead = 1 + chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead
)

var (
	// ErrLocked: the manager's keys are wrapped by the cluster's unlock
	// key (autolock) and no key was given.
	ErrLocked = errors.New("this manager is locked: unlock it with `shoald unlock` and the cluster's unlock key (`shoalctl cluster unlock-key` on an unlocked manager)")
	// ErrWrongUnlockKey: the key given does not unwrap the manager's DEK.
	ErrWrongUnlockKey = errors.New("the unlock key does not unlock this manager: it is not the cluster's current unlock key (or the one current when this manager stopped)")
)

// keyFile is keys.json.
type keyFile struct {
	// DEK is the data key, sealed by the KEK.
	DEK []byte `json:"dek"`
	// KEK is present when the manager is not locked.
	KEK []byte `json:"kek,omitempty"`
	// Locked says the KEK is the cluster's unlock key, not on disk.
	Locked bool `json:"locked"`
}

func keysPath(dir string) string { return filepath.Join(dir, keysFile) }

func newKey() []byte {
	k := make([]byte, keySize)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("read random key: %v", err)) // crypto/rand does not fail on Linux
	}
	return k
}

// NewUnlockKey returns a fresh unlock key.
func NewUnlockKey() string {
	return UnlockKeyPrefix + base64.RawURLEncoding.EncodeToString(newKey())
}

// ParseUnlockKey returns the KEK an unlock key stands for.
func ParseUnlockKey(key string) ([]byte, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(key), UnlockKeyPrefix)
	if !ok {
		return nil, fmt.Errorf("an unlock key starts with %s", UnlockKeyPrefix)
	}
	k, err := base64.RawURLEncoding.DecodeString(rest)
	if err != nil || len(k) != keySize {
		return nil, fmt.Errorf("the unlock key is malformed: want %s followed by %d bytes in unpadded base64url", UnlockKeyPrefix, keySize)
	}
	return k, nil
}

// sealer seals and opens values with one key.
type sealer struct {
	key []byte
}

func (s sealer) seal(plain, ad []byte) []byte {
	aead, err := chacha20poly1305.NewX(s.key)
	if err != nil {
		panic(fmt.Sprintf("xchacha20poly1305: %v", err)) // the key size is fixed
	}
	out := make([]byte, 1+aead.NonceSize(), sealOverhead+len(plain))
	out[0] = sealVersion
	if _, err := rand.Read(out[1:]); err != nil {
		panic(fmt.Sprintf("read random nonce: %v", err))
	}
	return aead.Seal(out, out[1:], plain, ad)
}

var errUnseal = errors.New("cannot be decrypted (wrong key, or damaged)")

func (s sealer) open(sealed, ad []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(s.key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < sealOverhead || sealed[0] != sealVersion {
		return nil, errUnseal
	}
	nonce := sealed[1 : 1+aead.NonceSize()]
	plain, err := aead.Open(nil, nonce, sealed[1+aead.NonceSize():], ad)
	if err != nil {
		return nil, errUnseal
	}
	return plain, nil
}

var dekAD = []byte("shoal/raft/dek")

// keyring is a manager's DEK and the KEK that wraps it on disk.
type keyring struct {
	dir    string
	dek    []byte
	kek    []byte
	locked bool
}

// hasKeys reports whether dir holds a keys file.
func hasKeys(dir string) bool {
	_, err := os.Stat(keysPath(dir))
	return err == nil
}

// Locked reports whether the raft state in dir needs the unlock key.
func Locked(dir string) bool {
	b, err := os.ReadFile(keysPath(dir))
	if err != nil {
		return false
	}
	var f keyFile
	return json.Unmarshal(b, &f) == nil && f.Locked
}

// CheckUnlockKey reports whether kek unlocks the keys in dir: nil, or
// ErrWrongUnlockKey, or why the keys cannot be read.
func CheckUnlockKey(dir string, kek []byte) error {
	_, err := loadKeys(dir, kek)
	return err
}

// createKeys makes a new DEK for dir, wrapped by kek when given (locked)
// or by a new KEK kept beside it.
func createKeys(dir string, kek []byte) (*keyring, error) {
	k := &keyring{dir: dir, dek: newKey()}
	if err := k.rewrap(kek); err != nil {
		return nil, err
	}
	return k, nil
}

// loadKeys reads dir's keys; kek is needed when they are locked.
func loadKeys(dir string, kek []byte) (*keyring, error) {
	b, err := os.ReadFile(keysPath(dir))
	if err != nil {
		return nil, fmt.Errorf("read raft keys: %w", err)
	}
	var f keyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("read raft keys %s: %w", keysPath(dir), err)
	}
	k := &keyring{dir: dir, locked: f.Locked}
	switch {
	case f.Locked && kek == nil:
		return nil, ErrLocked
	case f.Locked:
		k.kek = kek
	case len(f.KEK) != keySize:
		return nil, fmt.Errorf("raft keys %s: the key encryption key is missing or malformed", keysPath(dir))
	default:
		// An unlocked manager given a key (the cluster turned autolock on
		// while it was down) opens with its own; the key is applied
		// once the store is read.
		k.kek = f.KEK
	}
	dek, err := sealer{k.kek}.open(f.DEK, dekAD)
	if err != nil {
		if f.Locked {
			return nil, ErrWrongUnlockKey
		}
		return nil, fmt.Errorf("raft keys %s: the data key %w", keysPath(dir), err)
	}
	if len(dek) != keySize {
		return nil, fmt.Errorf("raft keys %s: the data key is malformed", keysPath(dir))
	}
	k.dek = dek
	return k, nil
}

// rewrap wraps the DEK with kek (locked) or, when kek is nil, with a new
// KEK kept on disk, and replaces keys.json atomically.
func (k *keyring) rewrap(kek []byte) error {
	f := keyFile{Locked: kek != nil}
	if kek == nil {
		kek = newKey()
		f.KEK = kek
	}
	f.DEK = sealer{kek}.seal(k.dek, dekAD)
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	if err := writeFileSync(keysPath(k.dir), b); err != nil {
		return fmt.Errorf("write raft keys: %w", err)
	}
	k.kek, k.locked = kek, f.Locked
	return nil
}

// writeFileSync replaces path with b (mode 0600) so that a crash leaves
// the old or the new content, never a mix.
func writeFileSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// tightenModes makes dir and everything under it owner-only: 0700 for
// directories, 0600 for files (a data dir made by an older shoald, or
// files hashicorp/raft creates with the umask's modes).
func tightenModes(dir string) error {
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		if d.IsDir() {
			mode = 0o700
		} else if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm() != mode {
			if err := os.Chmod(path, mode); err != nil {
				return fmt.Errorf("restrict %s: %w", path, err)
			}
		}
		return nil
	})
}

var nodeKeyAD = []byte("shoal/node/key")

// KeySealer seals a node's private key with the cluster's unlock key
// (identity.KeySealer), so that an autolocked manager's data dir holds no
// usable key either.
type KeySealer struct{ kek []byte }

// NewKeySealer returns a sealer for the unlock key kek (ParseUnlockKey).
func NewKeySealer(kek []byte) KeySealer { return KeySealer{kek: kek} }

// SealKey seals a PEM private key.
func (k KeySealer) SealKey(keyPEM []byte) []byte { return sealer{k.kek}.seal(keyPEM, nodeKeyAD) }

// OpenKey opens what SealKey sealed.
func (k KeySealer) OpenKey(sealed []byte) ([]byte, error) {
	return sealer{k.kek}.open(sealed, nodeKeyAD)
}
