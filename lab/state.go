package lab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// stateVersion changes when the state file's meaning does; an unknown
// version is refused rather than misread.
const stateVersion = 1

// ErrNotUp is returned when no lab is up.
var ErrNotUp = errors.New("no lab is up (start one with `shoalctl lab up`)")

// state is what the lab remembers between commands, in stateFile. Down
// does not need it; everything else does.
type state struct {
	Version int          `json:"version"`
	Subnet  netip.Prefix `json:"subnet"`
	// Gateway is the bridge's address with the subnet's length.
	Gateway           netip.Prefix `json:"gateway"`
	Shoald            string       `json:"shoald"`
	ShoaldArgs        []string     `json:"shoald_args,omitempty"`
	ContainerdAddress string       `json:"containerd_address"`
	// Listen says whether this shoald takes --listen-addr and
	// --advertise-addr (older builds serve the unix socket only).
	Listen bool `json:"listen"`
	// Images are the image tarballs imported into every node, also
	// into nodes added later.
	Images []string `json:"images,omitempty"`
	Nodes  []Node   `json:"nodes"`
}

func writeState(path string, st state) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	return writeFileAtomic(path, append(b, '\n'))
}

func readState(path string) (state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, ErrNotUp
	}
	if err != nil {
		return state{}, fmt.Errorf("read lab state: %w", err)
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return state{}, fmt.Errorf("read lab state %s: %w (run `shoalctl lab down` to start over)", path, err)
	}
	if st.Version != stateVersion {
		return state{}, fmt.Errorf("lab state %s has version %d, this shoalctl knows %d: run `shoalctl lab down` to start over", path, st.Version, stateVersion)
	}
	return st, nil
}

// writeFileAtomic replaces path in one step, so a reader never sees half a
// file and a crash never leaves one.
func writeFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ContextSockets returns the sockets plain shoalctl should talk to while a
// lab is up, the lab's managers in the order to try them, or none when no
// lab is up.
func ContextSockets() ([]string, error) { return readContext(ContextFile) }

func readContext(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lab context: %w", err)
	}
	var sockets []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			sockets = append(sockets, line)
		}
	}
	return sockets, nil
}

func writeContext(path string, sockets []string) error {
	return writeFileAtomic(path, []byte(strings.Join(sockets, "\n")+"\n"))
}
