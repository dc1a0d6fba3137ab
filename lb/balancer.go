package lb

import (
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
	installed ruleset
	// rebuild says the table is missing or has another layout: the next
	// Apply replaces it whole, in one transaction.
	rebuild bool
	state   State
	marks   map[backendKey]uint32
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
// sends that backend's elements and, at most, its farm's chain.
func (b *Balancer) Apply(ctx context.Context, s State) (Result, error) {
	if err := Validate(s, b.opts); err != nil {
		return Result{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	marks, next := b.allocateMarks(s)
	desired := compile(s, b.opts, marks)
	batch := b.diff(desired)
	res := Result{Rebuilt: b.rebuild, Messages: batch.Messages(), Elements: batch.Elements()}
	if batch.Empty() {
		b.state, b.marks, b.nextMark = cloneState(s), marks, next
		return res, nil
	}
	start := time.Now()
	err := b.conn.Commit(ctx, batch)
	res.Duration = time.Since(start)
	if errors.Is(err, nft.ErrStateUnknown) {
		// The kernel may have committed; find out.
		if rerr := b.readKernel(ctx); rerr != nil {
			return res, fmt.Errorf("%w (and reading the kernel back failed: %w)", err, rerr)
		}
		if !b.diff(desired).Empty() {
			return res, err
		}
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("applying %d farms to table %s: %w", len(s.Farms), b.opts.Table, err)
	}
	res.Changed = true
	cut := b.connectionsToCut(s)
	b.installed, b.rebuild = desired, false
	b.state, b.marks, b.nextMark = cloneState(s), marks, next
	elements, rules := desired.size()
	b.opts.Logger.Info("applied", "table", b.opts.Table, "farms", len(s.Farms),
		"messages", res.Messages, "elements_changed", res.Elements, "rebuilt", res.Rebuilt,
		"elements", elements, "farm_rules", rules, "duration", res.Duration)
	if b.opts.FlushConntrack && len(cut) > 0 {
		var ms []uint32
		for _, k := range slices.SortedFunc(maps.Keys(cut), func(a, b backendKey) int { return strings.Compare(a.String(), b.String()) }) {
			ms = append(ms, cut[k])
			res.FlushedConntrack = append(res.FlushedConntrack, k.String())
		}
		if err := flushConntrack(b.conn.NetNSFd(), b.opts.MarkMask, ms); err != nil {
			return res, fmt.Errorf("ruleset applied, but cutting connections of %v failed: %w", res.FlushedConntrack, err)
		}
		b.opts.Logger.Info("cut connections", "backends", res.FlushedConntrack)
	}
	return res, nil
}

// connectionsToCut returns the marks of the backends that took traffic
// and are removed or Down in s. Called before b.state is replaced.
func (b *Balancer) connectionsToCut(s State) map[backendKey]uint32 {
	now := map[backendKey]BackendState{}
	for _, f := range s.Farms {
		for _, be := range f.Backends {
			now[backendKey{f.Name, be.Name}] = be.State
		}
	}
	cut := map[backendKey]uint32{}
	for _, f := range b.state.Farms {
		for _, be := range f.Backends {
			k := backendKey{f.Name, be.Name}
			if st, still := now[k]; be.State != Down && (!still || st == Down) {
				cut[k] = b.marks[k]
			}
		}
	}
	return cut
}

// RemoveFarm deletes one farm and leaves the others untouched.
func (b *Balancer) RemoveFarm(ctx context.Context, name string) (Result, error) {
	s := b.State()
	i := slices.IndexFunc(s.Farms, func(f Farm) bool { return f.Name == name })
	if i < 0 {
		return Result{}, fmt.Errorf("removing farm %q: %w", name, ErrNoFarm)
	}
	s.Farms = slices.Delete(s.Farms, i, i+1)
	return b.Apply(ctx, s)
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
	b.installed, b.rebuild, b.state = newRuleset(), true, State{}
	b.marks = map[backendKey]uint32{}
	b.opts.Logger.Info("removed table", "table", b.opts.Table)
	return nil
}

// allocateMarks gives every backend of s a mark: the one it has, or a free
// one. It does not change b.
func (b *Balancer) allocateMarks(s State) (map[backendKey]uint32, uint32) {
	marks := map[backendKey]uint32{}
	used := map[uint32]bool{}
	for _, f := range s.Farms {
		for _, be := range f.Backends {
			k := backendKey{f.Name, be.Name}
			if m, ok := b.marks[k]; ok {
				marks[k] = m
				used[m] = true
			}
		}
	}
	max := uint32(b.opts.MaxBackends())
	next := b.nextMark
	shift := b.opts.markShift()
	for _, f := range s.Farms {
		for _, be := range f.Backends {
			k := backendKey{f.Name, be.Name}
			if _, ok := marks[k]; ok {
				continue
			}
			for { // Validate guarantees a free index exists.
				next = next%max + 1
				if m := next << shift; !used[m] {
					marks[k], used[m] = m, true
					break
				}
			}
		}
	}
	return marks, next
}

// diff returns the batch that turns the installed ruleset into desired.
func (b *Balancer) diff(desired ruleset) *nft.Batch {
	batch := nft.NewBatch(b.opts.Table)
	if b.rebuild {
		buildAll(batch, desired)
		return batch
	}
	inst := b.installed
	// Chains first: elements may jump to new ones.
	for _, name := range sortedKeys(desired.farms) {
		want := desired.farms[name]
		have, ok := inst.farms[name]
		switch {
		case !ok:
			batch.AddChain(want.Chain)
		case have.sameRules(want):
			continue
		default:
			batch.FlushChain(name)
		}
		for _, r := range want.rules {
			batch.AddRule(name, r.Rule)
		}
	}
	for _, s := range allSets {
		want, have := desired.elements[s.Name], inst.elements[s.Name]
		var del, add []nft.Element
		for _, id := range sortedKeys(have) {
			if w, ok := want[id]; !ok || !sameElement(w.Element, have[id].Element) {
				del = append(del, have[id].Element)
			}
		}
		for _, id := range sortedKeys(want) {
			if h, ok := have[id]; !ok || !sameElement(h.Element, want[id].Element) {
				add = append(add, want[id].Element)
			}
		}
		if len(del) > 0 {
			batch.DeleteElements(s, del)
		}
		if len(add) > 0 {
			batch.AddElements(s, add)
		}
	}
	// Chains last: nothing may jump to a chain when it is deleted.
	for _, name := range sortedKeys(inst.farms) {
		if _, ok := desired.farms[name]; !ok {
			batch.FlushChain(name)
			batch.DeleteChain(name)
		}
	}
	return batch
}

// buildAll queues the whole ruleset, replacing the table if it exists.
func buildAll(batch *nft.Batch, r ruleset) {
	batch.AddTable()
	batch.DeleteTable()
	batch.AddTable()
	for _, s := range allSets {
		batch.AddSet(s)
	}
	for _, name := range sortedKeys(r.farms) {
		c := r.farms[name]
		batch.AddChain(c.Chain)
		for _, rl := range c.rules {
			batch.AddRule(name, rl.Rule)
		}
	}
	for _, s := range allSets {
		es := r.elements[s.Name]
		if len(es) == 0 {
			continue
		}
		list := make([]nft.Element, 0, len(es))
		for _, id := range sortedKeys(es) {
			list = append(list, es[id].Element)
		}
		batch.AddElements(s, list)
	}
	for _, c := range r.base {
		batch.AddChain(c.Chain)
		for _, rl := range c.rules {
			batch.AddRule(c.Name, rl.Rule)
		}
	}
}

func cloneState(s State) State {
	out := State{Farms: slices.Clone(s.Farms)}
	for i := range out.Farms {
		out.Farms[i].Ports = slices.Clone(out.Farms[i].Ports)
		out.Farms[i].Backends = slices.Clone(out.Farms[i].Backends)
	}
	return out
}
