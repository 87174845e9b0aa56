package shoalv1

import (
	"fmt"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

// NanoCPU is one CPU in the unit of Resources.nano_cpus.
const NanoCPU = 1e9

// sizeRe is Docker's size syntax (go-units' RAMInBytes): a number, an
// optional space, an optional unit k, m, g, t or p in either case, an
// optional i and an optional b. Units are binary: 1k is 1024 bytes.
var sizeRe = regexp.MustCompile(`^(\d+(?:\.\d+)?) ?([kKmMgGtTpP])?[iI]?[bB]?$`)

var sizeUnits = map[string]float64{
	"":  1,
	"k": 1 << 10,
	"m": 1 << 20,
	"g": 1 << 30,
	"t": 1 << 40,
	"p": 1 << 50,
}

// ParseBytes reads a memory size in Docker's syntax: 512M, 1.5G, 64mb,
// 1024 (bytes). Fractions of a byte are dropped.
func ParseBytes(s string) (int64, error) {
	m := sizeRe.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		if strings.HasPrefix(strings.TrimSpace(s), "-") {
			return 0, fmt.Errorf("%q: a size cannot be negative", s)
		}
		return 0, fmt.Errorf("%q is not a size: write a number with an optional unit, such as 512M or 1.5G", s)
	}
	n, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %w", s, err)
	}
	n *= sizeUnits[strings.ToLower(m[2])]
	// float64(MaxInt64) rounds up to 2^63, which does not fit: refuse it.
	if n >= math.MaxInt64 {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return int64(n), nil
}

// ParseNanoCPUs reads a number of CPUs written as a decimal (0.5, 2,
// 1.25) into nano CPUs, as Docker's --cpus does.
func ParseNanoCPUs(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%q: a number of CPUs cannot be negative", s)
	}
	// big.Rat also reads fractions (1/2) and exponents; a CPU count is a
	// plain decimal.
	if t == "" || strings.Trim(t, "0123456789.") != "" || strings.Count(t, ".") > 1 || t == "." {
		return 0, fmt.Errorf("%q is not a number of CPUs: write a decimal such as 0.5 or 2", s)
	}
	r, ok := new(big.Rat).SetString(t)
	if !ok {
		return 0, fmt.Errorf("%q is not a number of CPUs: write a decimal such as 0.5 or 2", s)
	}
	r.Mul(r, big.NewRat(NanoCPU, 1))
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is too precise: CPUs go down to 0.000000001", s)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return r.Num().Int64(), nil
}

// FormatBytes writes a size for people, in binary units with up to three
// decimals: 512MiB, 1.5GiB, 100B.
func FormatBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n), 0
	for math.Abs(v) >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return strconv.FormatFloat(math.Round(v*1000)/1000, 'f', -1, 64) + units[i]
}

// FormatNanoCPUs writes nano CPUs as a decimal number of CPUs: 0.5, 2.
func FormatNanoCPUs(n int64) string {
	s := new(big.Rat).SetFrac64(n, NanoCPU).FloatString(9)
	return strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
}

// Limits below which a container cannot start or does nothing useful.
const (
	// MinMemoryLimit is Docker's minimum memory limit: below it the
	// runtime itself does not fit.
	MinMemoryLimit = 6 << 20
	// MinCPULimit is Docker's smallest --cpus: a CFS quota of 1 ms per
	// 100 ms period.
	MinCPULimit = NanoCPU / 100
)

// validateResources checks a task's limits and reservations.
func validateResources(r *ResourceRequirements) error {
	if r == nil {
		return nil
	}
	lim, res := r.GetLimits(), r.GetReservations()
	for _, v := range []struct {
		field string
		value int64
	}{
		{"task.resources.limits.nano_cpus", lim.GetNanoCpus()},
		{"task.resources.limits.memory_bytes", lim.GetMemoryBytes()},
		{"task.resources.reservations.nano_cpus", res.GetNanoCpus()},
		{"task.resources.reservations.memory_bytes", res.GetMemoryBytes()},
		{"task.resources.pids_limit", r.GetPidsLimit()},
	} {
		if v.value < 0 {
			return specErr(v.field, "%d is negative", v.value)
		}
	}
	if m := lim.GetMemoryBytes(); m > 0 && m < MinMemoryLimit {
		return specErr("task.resources.limits.memory_bytes", "%s is below the minimum of %s", FormatBytes(m), FormatBytes(MinMemoryLimit))
	}
	if c := lim.GetNanoCpus(); c > 0 && c < MinCPULimit {
		return specErr("task.resources.limits.nano_cpus", "%s CPUs is below the minimum of %s", FormatNanoCPUs(c), FormatNanoCPUs(MinCPULimit))
	}
	if l, v := lim.GetMemoryBytes(), res.GetMemoryBytes(); l > 0 && l < v {
		return specErr("task.resources.limits.memory_bytes", "the limit %s is below the reservation %s: a task could never use what is set aside for it", FormatBytes(l), FormatBytes(v))
	}
	if l, v := lim.GetNanoCpus(), res.GetNanoCpus(); l > 0 && l < v {
		return specErr("task.resources.limits.nano_cpus", "the limit %s CPUs is below the reservation %s CPUs: a task could never use what is set aside for it", FormatNanoCPUs(l), FormatNanoCPUs(v))
	}
	return nil
}
