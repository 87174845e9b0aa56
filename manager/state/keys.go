package state

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/shoal-project/shoal/seal"
)

// Encryption at rest, Swarm's model: each manager seals its raft log
// entries and snapshots with a data encryption key (DEK) of its own. The
// DEK is kept in keys.json wrapped by a key encryption key (KEK). Without
// autolock the KEK sits in keys.json beside it, so the manager restarts
// unattended; with autolock the KEK is the cluster's unlock key, held only
// in memory (and in the encrypted store), and a restarted manager opens
// nothing until it is given the key (`shoald unlock`).
//
// Values are sealed by package seal (XChaCha20-Poly1305, which says why),
// with associated data that ties each entry to its log index.

const (
	keysFile = "keys.json"
	// keySize is the size of a DEK, a KEK and an unlock key's secret.
	keySize = seal.KeySize
	// UnlockKeyPrefix starts every unlock key, so that a key pasted in
	// the wrong place is recognised.
	UnlockKeyPrefix = "SHOALKEY-1-"
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

// NewUnlockKey returns a fresh unlock key.
func NewUnlockKey() string {
	return UnlockKeyPrefix + base64.RawURLEncoding.EncodeToString(seal.NewKey())
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
	k := &keyring{dir: dir, dek: seal.NewKey()}
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
	dek, err := seal.New(k.kek).Open(f.DEK, dekAD)
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
		kek = seal.NewKey()
		f.KEK = kek
	}
	f.DEK = seal.New(kek).Seal(k.dek, dekAD)
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
func (k KeySealer) SealKey(keyPEM []byte) []byte { return seal.New(k.kek).Seal(keyPEM, nodeKeyAD) }

// OpenKey opens what SealKey sealed.
func (k KeySealer) OpenKey(sealed []byte) ([]byte, error) {
	return seal.New(k.kek).Open(sealed, nodeKeyAD)
}
