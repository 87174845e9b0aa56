package ctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
)

// managerMemory remembers, for each set of managers shoalctl is given
// (--host m1,m2,m3, or a lab's), the one that answered last, so that the
// next command asks it first instead of waiting again for a dead manager
// to fail. The last to answer rather than the raft leader: any manager
// serves reads and forwards writes to the leader, so the leader saves one
// hop at most, while a manager that answered is known to be reachable
// from here, which the leader's advertise address may not be (NAT, lab
// namespaces).
//
// It is a cache in the user's cache directory: when the file cannot be
// read or written, the order given is used, and nothing else changes.
type managerMemory struct {
	path string // "" remembers nothing
}

// memorySets bounds the file: one set per cluster used, most recent
// first; nobody switches between more clusters than that.
const memorySets = 16

// memoryFile is the file's content.
type memoryFile struct {
	Sets []memorySet `json:"sets"`
}

type memorySet struct {
	// Managers are the targets of the set, sorted, so that the order in
	// which the user lists them does not matter.
	Managers []string `json:"managers"`
	// Last is the one that answered last.
	Last string `json:"last"`
}

// defaultMemory is $XDG_CACHE_HOME/shoal/managers.json (or the platform's
// equivalent), or nothing when there is no cache directory.
func defaultMemory() managerMemory {
	dir, err := os.UserCacheDir()
	if err != nil {
		return managerMemory{}
	}
	return managerMemory{path: filepath.Join(dir, "shoal", "managers.json")}
}

// order is ts with the one that answered last moved to the front.
func (m managerMemory) order(ts targets) targets {
	if m.path == "" || len(ts) < 2 {
		return ts
	}
	key := setKey(ts)
	for _, s := range m.read().Sets {
		if !slices.Equal(s.Managers, key) {
			continue
		}
		i := slices.IndexFunc(ts, func(t target) bool { return t.String() == s.Last })
		if i <= 0 {
			return ts
		}
		out := append(targets{ts[i]}, ts[:i]...)
		return append(out, ts[i+1:]...)
	}
	return ts
}

// remember records that last answered for the set ts.
func (m managerMemory) remember(ts targets, last target) {
	if m.path == "" || len(ts) < 2 {
		return
	}
	key := setKey(ts)
	f := memoryFile{Sets: []memorySet{{Managers: key, Last: last.String()}}}
	for _, s := range m.read().Sets {
		if len(f.Sets) < memorySets && !slices.Equal(s.Managers, key) {
			f.Sets = append(f.Sets, s)
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return
	}
	m.write(append(b, '\n'))
}

func (m managerMemory) read() memoryFile {
	var f memoryFile
	b, err := os.ReadFile(m.path)
	if err != nil {
		return f
	}
	// A damaged file is forgotten, as a missing one.
	if json.Unmarshal(b, &f) != nil {
		return memoryFile{}
	}
	return f
}

// write replaces the file in one step, so that two shoalctls writing at
// once leave one's version, never a mix.
func (m managerMemory) write(b []byte) {
	dir := filepath.Dir(m.path)
	if os.MkdirAll(dir, 0o700) != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".managers-*.json")
	if err != nil {
		return
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(b)
	if cerr := tmp.Close(); werr != nil || cerr != nil {
		return
	}
	_ = os.Rename(tmp.Name(), m.path)
}

func setKey(ts targets) []string {
	key := make([]string, len(ts))
	for i, t := range ts {
		key[i] = t.String()
	}
	slices.Sort(key)
	return key
}
