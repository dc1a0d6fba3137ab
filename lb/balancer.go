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
	// order is the farms' names in the order last applied.
	order []string
	marks *markTable
	// garbage are elements no farm uses any more, deleted by Collect:
	// old schedule generations, and whatever an adopted table held that
	// no farm claims. garbageMarks are the farm marks they hold on to.
	garbage      elements
	garbageMarks []uint32
	// rebuild says the table is missing or has another layout: the next
	// Apply replaces it whole, in one transaction.
	rebuild bool
}

// collectAfter is the number of garbage elements after which Apply runs
// Collect by itself. Deleting from the schedule's rbtree costs the kernel a
// walk of the set whatever the number deleted (about 10 ms at 10,000
// farms), so deletions are batched rather than paid on every change.
const collectAfter = 4096

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

// Refresh forgets what the Balancer believes is installed and reads the
// kernel again, as Open does: after someone else changed or deleted the
// table, the next Apply repairs it. It sends nothing.
func (b *Balancer) Refresh(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.readKernel(ctx)
}

// Options returns the options in effect, defaults filled in.
func (b *Balancer) Options() Options { return b.opts }

// State returns the state the kernel holds.
func (b *Balancer) State() State {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state()
}

func (b *Balancer) state() State {
	s := State{Farms: make([]Farm, 0, len(b.order))}
	for _, name := range b.order {
		s.Farms = append(s.Farms, cloneFarm(b.farms[name].spec))
	}
	return s
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
// sends that backend's elements and, at most, a new schedule for its farm.
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
	marks *marks
	// changed are the farms to install; nil for a farm to remove.
	changed      map[string]*compiledFarm
	garbage      elements
	garbageMarks []uint32
	batch        *nft.Batch
	// cut are the backends that took traffic and are removed or Down,
	// with their marks.
	cut map[objectKey]uint32
}

// errMarksExhausted is returned by plan when the marks held by garbage are
// needed: Collect frees them.
var errMarksExhausted = errors.New("every conntrack mark is in use")

func (b *Balancer) apply(ctx context.Context, s State) (Result, error) {
	p, err := b.plan(s)
	if errors.Is(err, errMarksExhausted) && len(b.garbageMarks) > 0 {
		if err := b.collect(ctx); err != nil {
			return Result{}, err
		}
		p, err = b.plan(s)
	}
	if err != nil {
		return Result{}, fmt.Errorf("applying %d farms to table %s: %w", len(s.Farms), b.opts.Table, err)
	}
	res := Result{Rebuilt: b.rebuild, Messages: p.batch.Messages(), Elements: p.batch.Elements()}
	if p.batch.Empty() {
		b.setOrder(s)
		return res, nil
	}
	start := time.Now()
	err = b.conn.Commit(ctx, p.batch)
	res.Duration = time.Since(start)
	if errors.Is(err, nft.ErrStateUnknown) {
		// The kernel may have committed; find out.
		if rerr := b.readKernel(ctx); rerr != nil {
			return res, fmt.Errorf("%w (and reading the kernel back failed: %w)", err, rerr)
		}
		if again, perr := b.plan(s); perr != nil || !again.batch.Empty() {
			return res, err
		}
		err = nil
		p = &plan{changed: map[string]*compiledFarm{}, marks: b.marks.begin()}
	}
	if err != nil {
		return res, fmt.Errorf("applying %d farms to table %s: %w", len(s.Farms), b.opts.Table, err)
	}
	res.Changed = true
	b.commit(p)
	b.setOrder(s)
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
	if b.garbageSize() >= collectAfter {
		if err := b.collect(ctx); err != nil {
			b.opts.Logger.Warn("collecting unused elements failed; will retry", "err", err)
		}
	}
	return res, nil
}

// commit records a committed plan as installed.
func (b *Balancer) commit(p *plan) {
	for name, c := range p.changed {
		if c == nil {
			delete(b.farms, name)
		} else {
			b.farms[name] = c
		}
	}
	p.marks.commit()
	if b.rebuild {
		// A rebuilt table holds no garbage.
		for _, m := range b.garbageMarks {
			delete(b.marks.used, m)
		}
		b.garbage, b.garbageMarks = elements{}, nil
	}
	for set, es := range p.garbage {
		b.garbage[set] = append(b.garbage[set], es...)
	}
	b.garbageMarks = append(b.garbageMarks, p.garbageMarks...)
	b.rebuild = false
}

func (b *Balancer) setOrder(s State) {
	if len(s.Farms) == len(b.order) {
		same := true
		for i, f := range s.Farms {
			if b.order[i] != f.Name {
				same = false
				break
			}
		}
		if same {
			return
		}
	}
	b.order = make([]string, len(s.Farms))
	for i, f := range s.Farms {
		b.order[i] = f.Name
	}
}

// plan compiles the farms that changed and queues the difference. It
// does not change b. Its cost is a comparison per farm plus the size of
// what changed.
func (b *Balancer) plan(s State) (*plan, error) {
	p := &plan{
		marks:   b.marks.begin(),
		changed: map[string]*compiledFarm{},
		garbage: elements{},
		cut:     map[objectKey]uint32{},
	}
	del, add := map[string][]nft.Element{}, map[string][]nft.Element{}
	present := 0
	for _, f := range s.Farms {
		old := b.farms[f.Name]
		if old != nil {
			present++
		}
		if old != nil && !old.dirty && !b.rebuild && sameFarm(old.spec, f) {
			continue
		}
		farmKey := objectKey{f.Name, ""}
		if _, ok := p.marks.ensure(farmKey); !ok {
			return nil, errMarksExhausted
		}
		for _, be := range f.Backends {
			if _, ok := p.marks.ensure(objectKey{f.Name, be.Name}); !ok {
				return nil, errMarksExhausted
			}
		}
		c := compileFarm(f, p.marks, false)
		p.changed[f.Name] = c
		if b.rebuild {
			continue
		}
		have := elements{}
		if old != nil {
			b.releaseBackends(p, old.spec, &f)
			have = old.elements
			if len(have[setSchedule.Name]) > 0 && !sameSetElements(have[setSchedule.Name], c.elements[setSchedule.Name]) {
				// A new schedule generation: the farm takes a new mark
				// and its old schedule stays until Collect deletes it,
				// so that this change costs the rbtree an insertion only.
				p.garbageMarks = append(p.garbageMarks, p.marks.get(farmKey))
				if _, ok := p.marks.renew(farmKey); !ok {
					return nil, errMarksExhausted
				}
				c = compileFarm(f, p.marks, false)
				p.changed[f.Name] = c
				p.garbage[setSchedule.Name] = append(p.garbage[setSchedule.Name], have[setSchedule.Name]...)
				have = maps.Clone(have)
				delete(have, setSchedule.Name)
			}
		}
		elementDiff(have, c.elements, del, add)
	}
	if !b.rebuild && present != len(b.farms) {
		names := make(map[string]bool, len(s.Farms))
		for _, f := range s.Farms {
			names[f.Name] = true
		}
		for name, old := range b.farms {
			if names[name] {
				continue
			}
			p.changed[name] = nil
			b.releaseBackends(p, old.spec, nil)
			p.marks.drop(objectKey{name, ""})
			have := old.elements
			if sched := have[setSchedule.Name]; len(sched) > 0 {
				p.garbage[setSchedule.Name] = append(p.garbage[setSchedule.Name], sched...)
				p.garbageMarks = append(p.garbageMarks, b.marks.owner[objectKey{name, ""}])
				have = maps.Clone(have)
				delete(have, setSchedule.Name)
			} else {
				p.marks.release(b.marks.owner[objectKey{name, ""}])
			}
			elementDiff(have, nil, del, add)
		}
	}
	p.batch = nft.NewBatch(b.opts.Table)
	if b.rebuild {
		buildAll(p.batch, b.opts, p.changed)
		return p, nil
	}
	for _, set := range allSets {
		if len(del[set.Name]) > 0 {
			p.batch.DeleteElements(set, sortElements(del[set.Name]))
		}
	}
	for _, set := range allSets {
		if len(add[set.Name]) > 0 {
			p.batch.AddElements(set, sortElements(add[set.Name]))
		}
	}
	return p, nil
}

// releaseBackends frees the marks of the backends of old that are gone in
// now (nil: the farm is removed), and records the connections to cut:
// those of backends that took traffic and are gone or Down.
func (b *Balancer) releaseBackends(p *plan, old Farm, now *Farm) {
	for _, be := range old.Backends {
		k := objectKey{old.Name, be.Name}
		state, still := Down, false
		if now != nil {
			if i := slices.IndexFunc(now.Backends, func(x Backend) bool { return x.Name == be.Name }); i >= 0 {
				state, still = now.Backends[i].State, true
			}
		}
		m := b.marks.owner[k]
		if be.State != Down && state == Down {
			p.cut[k] = m
		}
		if !still {
			p.marks.drop(k)
			p.marks.release(m)
		}
	}
}

func (b *Balancer) garbageSize() int {
	n := 0
	for _, es := range b.garbage {
		n += len(es)
	}
	return n
}

// Collect deletes the elements no farm uses any more (old schedule
// generations, and what an adopted table held that no farm claims) in one
// batch, and frees their marks. Apply calls it once enough garbage has
// built up; an idle caller may call it any time.
func (b *Balancer) Collect(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.collect(ctx)
}

func (b *Balancer) collect(ctx context.Context) error {
	if b.rebuild || b.garbageSize() == 0 {
		return nil
	}
	batch := nft.NewBatch(b.opts.Table)
	for _, set := range allSets {
		var es []nft.Element
		for _, e := range b.garbage[set.Name] {
			es = append(es, e.Element)
		}
		if len(es) > 0 {
			batch.DeleteElements(set, sortElements(es))
		}
	}
	if err := b.conn.Commit(ctx, batch); err != nil {
		return fmt.Errorf("collecting %d unused elements of table %s: %w", batch.Elements(), b.opts.Table, err)
	}
	for _, m := range b.garbageMarks {
		delete(b.marks.used, m)
	}
	b.opts.Logger.Info("collected unused elements", "table", b.opts.Table, "elements", batch.Elements())
	b.garbage, b.garbageMarks = elements{}, nil
	return nil
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
	for _, c := range farms {
		for set, es := range c.elements {
			for _, e := range es {
				elems[set] = append(elems[set], e.Element)
			}
		}
	}
	for _, s := range allSets {
		if es := elems[s.Name]; len(es) > 0 {
			if s.Interval {
				sortElements(es)
			}
			batch.AddElements(s, es)
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
	s := b.state()
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
	b.farms, b.order, b.rebuild = map[string]*compiledFarm{}, nil, true
	b.marks = newMarkTable(b.opts)
	b.garbage, b.garbageMarks = elements{}, nil
}

// sortElements orders elements by key, a range's end before the start
// that shares its key: the order in which an interval set accepts them,
// for additions and deletions alike.
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

// SetFarm adds f, or replaces the installed farm of that name, and leaves
// every other farm as it is.
func (b *Balancer) SetFarm(ctx context.Context, f Farm) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.state()
	if i := slices.IndexFunc(s.Farms, func(x Farm) bool { return x.Name == f.Name }); i >= 0 {
		s.Farms[i] = f
	} else {
		s.Farms = append(s.Farms, f)
	}
	if err := Validate(s, b.opts); err != nil {
		return Result{}, err
	}
	return b.apply(ctx, s)
}
