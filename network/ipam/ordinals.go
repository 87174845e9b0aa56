package ipam

// ordinals is a set of used numbers in [lo, hi] with a next-fit cursor.
// Next-fit (rather than lowest-free) delays reuse of a released number, so
// an address or VNI freed by a removed task or network is not handed to a
// new one while stale FDB, neighbour or conntrack entries may still name it.
type ordinals struct {
	lo, hi uint32
	next   uint32
	used   map[uint32]struct{}
}

func newOrdinals(lo, hi uint32) *ordinals {
	return &ordinals{lo: lo, hi: hi, next: lo, used: make(map[uint32]struct{})}
}

func (o *ordinals) size() uint64 { return uint64(o.hi-o.lo) + 1 }

func (o *ordinals) full() bool { return uint64(len(o.used)) >= o.size() }

func (o *ordinals) contains(v uint32) bool { return v >= o.lo && v <= o.hi }

func (o *ordinals) isUsed(v uint32) bool {
	_, ok := o.used[v]
	return ok
}

func (o *ordinals) mark(v uint32) { o.used[v] = struct{}{} }

func (o *ordinals) unmark(v uint32) { delete(o.used, v) }

// take marks and returns the first free number at or after the cursor,
// wrapping around once.
func (o *ordinals) take() (uint32, bool) {
	if o.full() {
		return 0, false
	}
	v := o.next
	for {
		if !o.contains(v) {
			v = o.lo
		}
		if !o.isUsed(v) {
			o.mark(v)
			o.next = v + 1 // may leave the range or wrap to 0; contains() resets it
			return v, true
		}
		v++
	}
}
