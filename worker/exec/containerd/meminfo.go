package containerd

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

const procMeminfo = "/proc/meminfo"

// readMemTotal returns the MemTotal of a meminfo file, in bytes.
func readMemTotal(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("read memory size: %w", err)
	}
	defer f.Close()
	n, err := parseMemTotal(f)
	if err != nil {
		return 0, fmt.Errorf("read memory size from %s: %w", path, err)
	}
	return n, nil
}

// parseMemTotal finds the "MemTotal: N kB" line of /proc/meminfo.
func parseMemTotal(r io.Reader) (int64, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("malformed MemTotal line %q", sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("malformed MemTotal line %q", sc.Text())
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no MemTotal line")
}
