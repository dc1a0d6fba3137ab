package lb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l4nft/l4nft/nft"
)

// Balancer makes one nftables table in one network namespace match a
// desired State. It is safe for concurrent use; applies are serialised.
type Balancer struct {
	mu   sync.Mutex
	opts Options
	conn *nft.Conn

	// What the kernel holds, as far as this Balancer knows: read once by
	// Open, then kept up to date by every successful commit.
	farms map[string]*compiledFarm
	// orphans are elements found in the kernel that belong to no farm;
	// the next Apply deletes them.
	orphans map[string]map[string]element
	// rebuild says the table is missing or has another layout: the next
	// Apply replaces it whole, in one transaction.
	rebuild bool
	// state is the installed State, farms in the order last applied.
	state State
	// marks of the installed farms and backends.
	marks map[objectKey]uint32
	// nextMark is where the search for a free mark index starts, so that
	// a removed backend's mark is not reused at once while conntrack
	// entries may still carry it.
	nextMark uint32
}

// Open connects to the namespace in opts and adopts the table if it
// exists: the installed farms become the Balancer's state and nothing is
// sent to the kernel, so traffic is not disturbed. A table of another
// layout (or built with other options) is kept until the first Apply,
// which replaces it atomically.
func Open(ctx context.Context, opts Options) (*Balancer, error) {
	opts = opts.withDefaults()
	if err := opts.check(); err != nil {
		return nil, err
	}
	conn, err := nft.Open(opts.NetNS)
	if err != nil {
		return nil, err
	}
	b := &Balancer{opts: opts, conn: conn}
	if err := b.readKernel(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return b, nil
}

// Close releases the connection. The ruleset stays in the kernel.
func (b *Balancer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.conn.Close()
}

// Options returns the options in effect, defaults filled in.
func (b *Balancer) Options() Options { return b.opts }

// State returns the state the kernel holds.
func (b *Balancer) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return cloneState(b.state)
}

// Result describes what an Apply sent to the kernel.
type Result struct {
	// Changed is false when the kernel already matched: nothing was sent.
	Changed bool
	// Rebuilt says the whole table was (re)created.
	Rebuilt bool
	// Messages and Elements count what the batch held.
	Messages, Elements int
	// FlushedConntrack lists the backends whose connections were cut.
	FlushedConntrack []string
	// Duration is the time spent in the kernel transaction.
	Duration time.Duration
}

// Apply makes the kernel match s. It validates s first and returns a
// *ValidationError (errors.Is ErrInvalid) listing every problem without
// touching the kernel. Otherwise it sends the difference between what is
// installed and s as one atomic batch: if the kernel rejects it, nothing
// changed. Applying what is installed sends nothing; changing one backend
// sends that backend's elements and, at most, its farm's schedule.
func (b *Balancer) Apply(ctx context.Context, s State) (Result, error) {
	if err := Validate(s, b.opts); err != nil {
		return Result{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.apply(ctx, s)
}

// plan is the outcome of comparing a desired State with what is installed.
type plan struct {
	farms    map[string]*compiledFarm
	marks    map[objectKey]uint32
	nextMark uint32
	batch    *nft.Batch
	// cut are the backends that took traffic and are removed or Down.
	cut map[objectKey]uint32
}

func (b *Balancer) apply(ctx context.Context, s State) (Result, error) {
	p := b.plan(s)
	res := Result{Rebuilt: b.rebuild, Messages: p.batch.Messages(), Elements: p.batch.Elements()}
	if p.batch.Empty() {
		b.state = cloneState(s)
		return res, nil
	}
	start := time.Now()
	err := b.conn.Commit(ctx, p.batch)
	res.Duration = time.Since(start)
	if errors.Is(err, nft.ErrStateUnknown) {
		// The kernel may have committed; find out.
		if rerr := b.readKernel(ctx); rerr != nil {
			return res, fmt.Errorf("%w (and reading the kernel back failed: %w)", err, rerr)
		}
		if !b.plan(s).batch.Empty() {
			return res, err
		}
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("applying %d farms to table %s: %w", len(s.Farms), b.opts.Table, err)
	}
	res.Changed = true
	b.farms, b.marks, b.nextMark = p.farms, p.marks, p.nextMark
	b.orphans, b.rebuild = nil, false
	b.state = cloneState(s)
	b.opts.Logger.Info("applied", "table", b.opts.Table, "farms", len(s.Farms),
		"messages", res.Messages, "elements", res.Elements, "rebuilt", res.Rebuilt, "duration", res.Duration)
	if b.opts.FlushConntrack && len(p.cut) > 0 {
		var ms []uint32
		for _, k := range slices.SortedFunc(maps.Keys(p.cut), func(x, y objectKey) int { return strings.Compare(x.String(), y.String()) }) {
			ms = append(ms, p.cut[k])
			res.FlushedConntrack = append(res.FlushedConntrack, k.String())
		}
		if err := flushConntrack(b.conn.NetNSFd(), b.opts.MarkMask, ms); err != nil {
			return res, fmt.Errorf("ruleset applied, but cutting connections of %v failed: %w", res.FlushedConntrack, err)
		}
		b.opts.Logger.Info("cut connections", "backends", res.FlushedConntrack)
	}
	return res, nil
}

// plan compiles the farms that changed and queues the difference. It
// does not change b. Work is proportional to the number of farms (a
// comparison each) plus the size of what changed.
func (b *Balancer) plan(s State) plan {
	p := plan{farms: make(map[string]*compiledFarm, len(s.Farms)), cut: map[objectKey]uint32{}}
	p.marks, p.nextMark = b.allocateMarks(s)
	del, add := map[string][]nft.Element{}, map[string][]nft.Element{}
	empty := map[string]map[string]element{}
	for _, f := range s.Farms {
		old := b.farms[f.Name]
		if old != nil && !old.dirty && !b.rebuild && sameFarm(old.spec, f) {
			p.farms[f.Name] = old
			continue
		}
		c := compileFarm(f, p.marks)
		p.farms[f.Name] = c
		if b.rebuild {
			continue
		}
		have := empty
		if old != nil {
			have = old.elements
			b.cutBackends(old.spec, &f, p.cut)
		}
		want := c.elements
		if have[setSchedule.Name] != nil && !sameElements(
			map[string]map[string]element{"": have[setSchedule.Name]},
			map[string]map[string]element{"": want[setSchedule.Name]}) {
			// Replace the farm's schedule whole. Moving one boundary in
			// place would insert a range end inside what is, between the
			// deletes and the adds, one range: the kernel calls that an
			// overlap.
			want = maps.Clone(want)
			want[setSchedule.Name] = renamed(want[setSchedule.Name])
		}
		elementDiff(have, want, del, add)
	}
	if !b.rebuild {
		for name, old := range b.farms {
			if _, ok := p.farms[name]; !ok {
				elementDiff(old.elements, empty, del, add)
				b.cutBackends(old.spec, nil, p.cut)
			}
		}
		elementDiff(b.orphans, empty, del, add)
	}
	batch := nft.NewBatch(b.opts.Table)
	if b.rebuild {
		buildAll(batch, b.opts, p.farms)
	} else {
		for _, set := range allSets {
			if len(del[set.Name]) > 0 {
				// In key order: an rbtree refuses to delete a range's
				// start after its end (ENOENT).
				batch.DeleteElements(set, sortElements(del[set.Name]))
			}
		}
		for _, set := range allSets {
			if len(add[set.Name]) > 0 {
				batch.AddElements(set, sortElements(add[set.Name]))
			}
		}
	}
	p.batch = batch
	return p
}

// cutBackends records the backends of old that took traffic and are
// removed or Down in now (nil: the farm is removed).
func (b *Balancer) cutBackends(old Farm, now *Farm, cut map[objectKey]uint32) {
	for _, be := range old.Backends {
		if be.State == Down {
			continue
		}
		gone := true
		if now != nil {
			if i := slices.IndexFunc(now.Backends, func(x Backend) bool { return x.Name == be.Name }); i >= 0 {
				gone = now.Backends[i].State == Down
			}
		}
		if k := (objectKey{old.Name, be.Name}); gone {
			cut[k] = b.marks[k]
		}
	}
}

// buildAll queues the whole ruleset, replacing the table if it exists.
func buildAll(batch *nft.Batch, o Options, farms map[string]*compiledFarm) {
	batch.AddTable()
	batch.DeleteTable()
	batch.AddTable()
	for _, s := range allSets {
		batch.AddSet(s)
	}
	elems := map[string][]nft.Element{setSchema.Name: {schemaElement(o).Element}}
	for _, name := range sortedKeys(farms) {
		for set, es := range farms[name].elements {
			for _, e := range es {
				elems[set] = append(elems[set], e.Element)
			}
		}
	}
	for _, s := range allSets {
		if len(elems[s.Name]) > 0 {
			batch.AddElements(s, sortElements(elems[s.Name]))
		}
	}
	for _, c := range baseChains(o) {
		batch.AddChain(c.Chain)
		for _, rl := range c.rules {
			batch.AddRule(c.Name, rl.Rule)
		}
	}
}

// RemoveFarm deletes one farm and leaves the others untouched.
func (b *Balancer) RemoveFarm(ctx context.Context, name string) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := cloneState(b.state)
	i := slices.IndexFunc(s.Farms, func(f Farm) bool { return f.Name == name })
	if i < 0 {
		return Result{}, fmt.Errorf("removing farm %q: %w", name, ErrNoFarm)
	}
	s.Farms = slices.Delete(s.Farms, i, i+1)
	return b.apply(ctx, s)
}

// ErrNoFarm reports a farm name that is not installed.
var ErrNoFarm = errors.New("no such farm")

// Remove deletes the balancer's table, and only it. Established
// connections keep their NAT bindings until they end.
func (b *Balancer) Remove(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	batch := nft.NewBatch(b.opts.Table)
	batch.AddTable() // so that the delete succeeds whether or not it exists
	batch.DeleteTable()
	if err := b.conn.Commit(ctx, batch); err != nil {
		return fmt.Errorf("removing table %s: %w", b.opts.Table, err)
	}
	b.reset()
	b.opts.Logger.Info("removed table", "table", b.opts.Table)
	return nil
}

// reset forgets everything installed: the next Apply builds the table.
func (b *Balancer) reset() {
	b.farms, b.orphans, b.rebuild, b.state = map[string]*compiledFarm{}, nil, true, State{}
	b.marks, b.nextMark = map[objectKey]uint32{}, 0
}

// allocateMarks gives every farm and backend of s a mark: the one it has,
// or a free one. It does not change b.
func (b *Balancer) allocateMarks(s State) (map[objectKey]uint32, uint32) {
	marks := make(map[objectKey]uint32, len(b.marks)+1)
	used := make(map[uint32]bool, len(b.marks)+1)
	var missing []objectKey
	take := func(k objectKey) {
		if m, ok := b.marks[k]; ok {
			marks[k], used[m] = m, true
		} else {
			missing = append(missing, k)
		}
	}
	for _, f := range s.Farms {
		take(objectKey{f.Name, ""})
		for _, be := range f.Backends {
			take(objectKey{f.Name, be.Name})
		}
	}
	max := uint32(b.opts.MaxMarks())
	next := b.nextMark
	shift := b.opts.markShift()
	for _, k := range missing {
		for { // Validate guarantees a free index exists.
			next = next%max + 1
			if m := next << shift; !used[m] {
				marks[k], used[m] = m, true
				break
			}
		}
	}
	return marks, next
}

// renamed returns the elements under IDs no installed element has, so
// that elementDiff deletes every old one and adds every new one.
func renamed(es map[string]element) map[string]element {
	out := make(map[string]element, len(es))
	for id, e := range es {
		out["new\x00"+id] = e
	}
	return out
}

// sortElements orders elements by key, a range's end before the start
// that shares its key: the order in which an interval set accepts them.
func sortElements(es []nft.Element) []nft.Element {
	slices.SortFunc(es, func(a, b nft.Element) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		switch {
		case a.IntervalEnd == b.IntervalEnd:
			return 0
		case a.IntervalEnd:
			return -1
		}
		return 1
	})
	return es
}
