package shard

// table numbers names the planner refers to over and over (nodes, image
// references, keys, registry hosts, zones): a name in use has a small
// number, given on its first use and recycled when its last use is
// released. The planner's per-image structures (a node's images, a key's
// members) hold numbers, not strings or pointers, so they are a third of
// the size and hold nothing the garbage collector has to trace (a map
// whose keys and values have no pointers is never scanned): at 15,000
// nodes × 100 images they are 1.5 million entries each (issue 21). A
// name's slot also holds v, what the planner keeps per name. Names coming
// and going (a churn of nodes, images replaced) reuse the numbers of
// those gone: the table is as long as the most names in use at once.
type table[ID ~uint32, V any] struct {
	ids   map[string]ID
	slots []slot[V]
	free  []ID
}

type slot[V any] struct {
	name string
	uses int
	v    V
}

func newTable[ID ~uint32, V any]() table[ID, V] {
	return table[ID, V]{ids: map[string]ID{}}
}

// lookup is name's number, if it is in use.
func (t *table[ID, V]) lookup(name string) (ID, bool) {
	id, ok := t.ids[name]
	return id, ok
}

// acquire adds a use of name and returns its number: the one it has, or
// a free one (its v the zero V).
func (t *table[ID, V]) acquire(name string) ID {
	if id, ok := t.ids[name]; ok {
		t.slots[id].uses++
		return id
	}
	var id ID
	if n := len(t.free); n > 0 {
		id, t.free = t.free[n-1], t.free[:n-1]
	} else {
		id = ID(len(t.slots))
		t.slots = append(t.slots, slot[V]{})
	}
	t.slots[id] = slot[V]{name: name, uses: 1}
	t.ids[name] = id
	return id
}

// release drops a use of id; the last one frees the number and forgets
// the name and its v.
func (t *table[ID, V]) release(id ID) {
	s := &t.slots[id]
	if s.uses--; s.uses > 0 {
		return
	}
	delete(t.ids, s.name)
	*s = slot[V]{}
	t.free = append(t.free, id)
}

// live reports whether id is a number in use.
func (t *table[ID, V]) live(id ID) bool { return int(id) < len(t.slots) && t.slots[id].uses > 0 }

// name is id's name.
func (t *table[ID, V]) name(id ID) string { return t.slots[id].name }

// at is id's v, to read or set (valid until the next acquire).
func (t *table[ID, V]) at(id ID) *V { return &t.slots[id].v }

// len is the number of names in use.
func (t *table[ID, V]) len() int { return len(t.ids) }

// each calls fn for every number in use, with its v.
func (t *table[ID, V]) each(fn func(ID, V)) {
	for i := range t.slots {
		if t.slots[i].uses > 0 {
			fn(ID(i), t.slots[i].v)
		}
	}
}
