package lb

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/l4nft/l4nft/nft"
)

// apply installs farms; with whole, farms is the entire State and every
// installed farm not in it is removed.
func (b *Balancer) apply(ctx context.Context, farms []Farm, whole bool) (Result, error) {
	if !whole {
		return b.applyChanges(ctx, farms, nil, nil)
	}
	var removed []string
	present := 0
	for _, f := range farms {
		if b.farms[f.Name] != nil {
			present++
		}
	}
	if present != len(b.farms) {
		names := make(map[string]bool, len(farms))
		for _, f := range farms {
			names[f.Name] = true
		}
		for name := range b.farms {
			if !names[name] {
				removed = append(removed, name)
			}
		}
		slices.Sort(removed)
	}
	order := make([]string, len(farms))
	for i, f := range farms {
		order[i] = f.Name
	}
	return b.applyChanges(ctx, farms, removed, order)
}

// errMarksExhausted is returned by plan when every mark is taken.
var errMarksExhausted = errors.New("every conntrack mark is in use")

// applyChanges plans and commits: set farms, remove the named ones, and
// (if order is not nil) record order as the farms' order.
func (b *Balancer) applyChanges(ctx context.Context, set []Farm, removed, order []string) (Result, error) {
	p, err := b.plan(set, removed)
	if errors.Is(err, errMarksExhausted) && len(set)+len(removed) > 1 {
		// Each farm whose schedule changes needs a spare mark until its
		// change is committed: with few left, change one farm at a time.
		return b.applyOneByOne(ctx, set, removed, order)
	}
	if err != nil {
		return Result{}, fmt.Errorf("applying to table %s: %w", b.opts.Table, err)
	}
	res := Result{Rebuilt: b.rebuild, MarkCollisions: p.marks.collisions}
	if p.empty() {
		b.setOrder(set, removed, order)
		return res, nil
	}
	err = b.commitPlan(ctx, p, &res)
	if errors.Is(err, nft.ErrStateUnknown) || err != nil && res.Transactions > 0 {
		// The kernel may have committed (ENOBUFS), or took the first
		// transactions and refused a later one (something changed our
		// table behind our back). commitPlan has read the kernel back:
		// finish the change from the truth, once.
		if errors.Is(err, nft.ErrStateUnknown) {
			if rerr := b.readKernel(ctx); rerr != nil {
				return res, fmt.Errorf("%w (and reading the kernel back failed: %w)", err, rerr)
			}
		}
		again, perr := b.plan(set, removed)
		if perr != nil {
			return res, fmt.Errorf("applying to table %s: %w", b.opts.Table, err)
		}
		if !again.empty() {
			if err = b.commitPlan(ctx, again, &res); err != nil {
				return res, fmt.Errorf("applying to table %s: %w", b.opts.Table, err)
			}
		}
		err = nil
	}
	if err != nil {
		return res, fmt.Errorf("applying to table %s: %w", b.opts.Table, err)
	}
	res.Changed = true
	b.setOrder(set, removed, order)
	b.opts.Logger.Info("applied", "table", b.opts.Table, "farms_changed", len(p.changed),
		"transactions", res.Transactions, "messages", res.Messages, "elements", res.Elements,
		"rebuilt", res.Rebuilt, "duration", res.Duration)
	if b.opts.FlushConntrack && len(p.cut) > 0 {
		var ms []uint32
		for _, k := range slices.SortedFunc(maps.Keys(p.cut), func(x, y objectKey) int { return strings.Compare(x.String(), y.String()) }) {
			ms = append(ms, p.cut[k])
			res.FlushedConntrack = append(res.FlushedConntrack, k.String())
		}
		if err := b.flush(b.opts.MarkMask, ms); err != nil {
			return res, fmt.Errorf("ruleset applied, but cutting connections of %v failed: %w", res.FlushedConntrack, err)
		}
		b.opts.Logger.Info("cut connections", "backends", res.FlushedConntrack)
	}
	return res, nil
}

// applyOneByOne applies removals first, then each farm on its own.
func (b *Balancer) applyOneByOne(ctx context.Context, set []Farm, removed, order []string) (Result, error) {
	var total Result
	add := func(r Result) {
		total.Changed = total.Changed || r.Changed
		total.Rebuilt = total.Rebuilt || r.Rebuilt
		total.Transactions += r.Transactions
		total.Messages += r.Messages
		total.Elements += r.Elements
		total.MarkCollisions += r.MarkCollisions
		total.FlushedConntrack = append(total.FlushedConntrack, r.FlushedConntrack...)
		total.Duration += r.Duration
	}
	if len(removed) > 0 {
		r, err := b.applyChanges(ctx, nil, removed, nil)
		add(r)
		if err != nil {
			return total, err
		}
	}
	for _, f := range set {
		r, err := b.applyChanges(ctx, []Farm{f}, nil, nil)
		add(r)
		if err != nil {
			return total, err
		}
	}
	b.setOrder(set, nil, order)
	return total, nil
}

// commitPlan sends a plan's transactions in order and records the plan as
// installed once the kernel took them all. If one fails, those before it
// stay (each leaves a consistent ruleset) and the Balancer reads the
// kernel back, so that the next Apply starts from the truth.
func (b *Balancer) commitPlan(ctx context.Context, p *plan, res *Result) error {
	sent := 0
	for _, batch := range p.batches {
		if batch.Empty() {
			continue
		}
		start := time.Now()
		err := b.conn.Commit(ctx, batch)
		res.Duration += time.Since(start)
		if err != nil {
			if sent > 0 && !errors.Is(err, nft.ErrStateUnknown) {
				if rerr := b.readKernel(ctx); rerr != nil {
					return fmt.Errorf("%w (and reading the kernel back failed: %w)", err, rerr)
				}
			}
			return err
		}
		sent++
		res.Transactions++
		res.Messages += batch.Messages()
		res.Elements += batch.Elements()
	}
	b.commit(p)
	if gen, err := b.conn.Generation(); err == nil {
		b.gen = gen
	} else {
		b.gen = 0 // unknown: the next Refresh reads back
	}
	return nil
}

// commit records a committed plan as installed.
func (b *Balancer) commit(p *plan) {
	for name, c := range p.changed {
		if old := b.farms[name]; old != nil {
			b.services.remove(old.spec)
		}
		if c == nil {
			delete(b.farms, name)
			continue
		}
		b.farms[name] = c
		b.services.add(c.spec)
	}
	p.marks.commit()
	if p.orphansDeleted {
		for m := range b.marks.used {
			if b.marks.used[m].farm == "" {
				delete(b.marks.used, m)
			}
		}
		b.orphans, b.orphanChains = elements{}, nil
	}
	b.rebuild = false
}

// setOrder keeps b.order, the farms' names in the order applied: order
// itself for a whole State, otherwise the old order less removed, with
// new farms of set appended.
func (b *Balancer) setOrder(set []Farm, removed, order []string) {
	if order != nil {
		if !slices.Equal(order, b.order) {
			b.order = order
		}
		return
	}
	if len(removed) > 0 {
		gone := make(map[string]bool, len(removed))
		for _, name := range removed {
			gone[name] = true
		}
		b.order = slices.DeleteFunc(b.order, func(name string) bool { return gone[name] })
	}
	if len(b.order) < len(b.farms) {
		for _, f := range set {
			if !slices.Contains(b.order, f.Name) {
				b.order = append(b.order, f.Name)
			}
		}
	}
}

// plan is the outcome of comparing what is installed with what is wanted:
// the farms that change and the transactions that change them.
//
// A change goes to the kernel in up to three transactions, so that a new
// connection never meets a half-made change, whatever order the kernel
// makes one transaction's changes visible in (it is not the same for hash
// and interval sets): first what nothing refers to yet (a new backend's
// elements, a farm's new schedule under its new farm mark); then what
// re-points (the services, to the new farm mark); last what nothing refers
// to any more (a removed backend's elements, a farm's old schedule).
type plan struct {
	marks *marks
	// changed are the farms to install; nil for a farm to remove.
	changed map[string]*compiledFarm
	// batches are the transactions, in order: add, re-point, delete.
	batches []*nft.Batch
	// cut are the backends that took traffic and are removed or Down,
	// with their marks.
	cut map[objectKey]uint32
	// orphansDeleted says the plan deletes what an adopted table held
	// that no farm claims.
	orphansDeleted bool
	// text is each transaction in nft syntax, when asked for.
	text []string
}

// writeElements writes one element operation in nft syntax. Elements
// without text (read back from a table that disagreed with its farms, or
// the end of a range, which nft writes with its start) are written as
// their key in hex, or left out.
func writeElements(w *strings.Builder, verb nft.Verb, table string, set nft.Set, es []element) {
	var lines []string
	for _, e := range es {
		switch {
		case e.text != "":
			lines = append(lines, e.text)
		case !e.IntervalEnd:
			lines = append(lines, fmt.Sprintf("0x%x", e.Key))
		}
	}
	if len(lines) == 0 {
		return
	}
	slices.Sort(lines)
	fmt.Fprintf(w, "%s inet %s %s {\n\t%s\n}\n", verb, table, set.Name, strings.Join(lines, ",\n\t"))
}

func (p *plan) empty() bool {
	for _, b := range p.batches {
		if !b.Empty() {
			return false
		}
	}
	return true
}

// plan compiles the farms of set that changed, and the removal of the
// farms named in removed, and queues the difference. It does not change
// b. Its cost is a comparison per farm of set plus the size of what
// changed.
func (b *Balancer) plan(set []Farm, removed []string) (*plan, error) {
	return b.planText(set, removed, false)
}

// planText is plan; with text, the plan's elements carry their nft syntax
// (see Plan.String), which costs a farm's compilation more.
func (b *Balancer) planText(set []Farm, removed []string, text bool) (*plan, error) {
	p := &plan{
		marks:   b.marks.begin(),
		changed: map[string]*compiledFarm{},
		cut:     map[objectKey]uint32{},
	}
	// installed returns an installed farm's elements, with their text if
	// asked for (recompiled: the kept ones have none).
	installed := func(old *compiledFarm) elements {
		if !text || old.dirty {
			return old.elements
		}
		return compileFarm(old.spec, b.marks.begin(), b.opts.MarkMask, true).elements
	}
	del, add := elements{}, elements{}
	// Farm chains come and go with their farm marks: added before the
	// elements that jump to them, deleted after.
	var addChains []*chain
	var delChains []string
	for _, name := range removed {
		old := b.farms[name]
		if old == nil {
			continue
		}
		p.changed[name] = nil
		b.releaseBackends(p, old.spec, nil)
		p.marks.drop(objectKey{name, ""})
		p.marks.drop(idKey(name))
		elementDiff(installed(old), nil, del, add)
		if old.chain != nil {
			delChains = append(delChains, old.chain.Name)
		}
	}
	for _, f := range set {
		old := b.farms[f.Name]
		if old != nil && !old.dirty && !b.rebuild && sameFarm(old.spec, f) {
			continue
		}
		if _, ok := p.marks.ensure(objectKey{f.Name, ""}); !ok {
			return nil, errMarksExhausted
		}
		for _, be := range f.Backends {
			if _, ok := p.marks.ensure(objectKey{f.Name, be.Name}); !ok {
				return nil, errMarksExhausted
			}
		}
		if needsID(f) {
			if _, ok := p.marks.ensure(idKey(f.Name)); !ok {
				return nil, errMarksExhausted
			}
		} else {
			p.marks.drop(idKey(f.Name))
		}
		if old != nil {
			b.releaseBackends(p, old.spec, &f)
		}
		c := compileFarm(f, p.marks, b.opts.MarkMask, text)
		if b.rebuild {
			p.changed[f.Name] = c
			continue
		}
		var have elements
		if old != nil {
			have = installed(old)
			if !sameSetElements(have.schedule(), c.elements.schedule()) || !sameChain(old.chain, c.chain) || (old.dirty && c.chain != nil) {
				// A new schedule (or farm chain) goes in beside the old
				// one under a new farm mark, the services move to it, and
				// the old one goes: the kernel's interval sets do not take
				// deletions and additions of overlapping ranges in one
				// transaction, and a chain's rules cannot change as one.
				if _, ok := p.marks.renew(objectKey{f.Name, ""}); !ok {
					return nil, errMarksExhausted
				}
				c = compileFarm(f, p.marks, b.opts.MarkMask, text)
			}
		}
		p.changed[f.Name] = c
		elementDiff(have, c.elements, del, add)
		if was, now := old.chainName(), c.chainName(); was != now {
			if was != "" {
				delChains = append(delChains, was)
			}
			if now != "" {
				addChains = append(addChains, c.chain)
			}
		}
	}
	if b.rebuild {
		batch := nft.NewBatch(b.opts.Table)
		all := maps.Clone(b.farms)
		for name, c := range p.changed {
			if c == nil {
				delete(all, name)
			} else {
				all[name] = c
			}
		}
		buildAll(batch, b.opts, all)
		p.batches = []*nft.Batch{batch}
		if text {
			p.text = []string{renderRuleset(b.opts, all)}
		}
		return p, nil
	}
	if len(b.orphans) > 0 || len(b.orphanChains) > 0 {
		elementDiff(b.orphans, nil, del, add)
		delChains = append(delChains, b.orphanChains...)
		p.orphansDeleted = true
	}
	adds, repoints, dels := nft.NewBatch(b.opts.Table), nft.NewBatch(b.opts.Table), nft.NewBatch(b.opts.Table)
	var addText, repointText, delText strings.Builder
	slices.SortFunc(addChains, func(x, y *chain) int { return strings.Compare(x.Name, y.Name) })
	for _, c := range addChains {
		queueChain(adds, c)
		if text {
			writeChain(&addText, b.opts.Table, c)
		}
	}
	for _, set := range allSets {
		// The mark an element belongs to: a backend's, or for the
		// schedule, its farm's. Services belong to no mark.
		owner := func(e nft.Element) (uint32, bool) {
			switch {
			case isService(set.Name) || isStrict(set.Name):
				return 0, false
			case isSchedule(set.Name):
				return scheduleFarm(e.Key), true
			}
			return nft.ParseMark(e.Key), true
		}
		var early, late, rdel, radd []element
		for _, e := range del[set.Name] {
			if m, ok := owner(e.Element); ok && !p.marks.live(m) {
				late = append(late, e)
			} else {
				rdel = append(rdel, e)
			}
		}
		for _, e := range add[set.Name] {
			if m, ok := owner(e.Element); ok && !p.marks.installed(m) {
				early = append(early, e)
			} else {
				radd = append(radd, e)
			}
		}
		queue := func(batch *nft.Batch, w *strings.Builder, verb nft.Verb, es []element) {
			if len(es) == 0 {
				return
			}
			raw := make([]nft.Element, len(es))
			for i, e := range es {
				raw[i] = e.Element
			}
			if set.Interval {
				sortElements(raw)
			}
			if verb == nft.AddElements {
				batch.AddElements(set, raw)
			} else {
				batch.DeleteElements(set, raw)
			}
			if text {
				writeElements(w, verb, b.opts.Table, set, es)
			}
		}
		queue(adds, &addText, nft.AddElements, early)
		queue(repoints, &repointText, nft.DeleteElements, rdel)
		queue(repoints, &repointText, nft.AddElements, radd)
		queue(dels, &delText, nft.DeleteElements, late)
	}
	slices.Sort(delChains)
	for _, name := range delChains {
		dels.DeleteChain(name)
		if text {
			fmt.Fprintf(&delText, "delete chain inet %s %s\n", b.opts.Table, name)
		}
	}
	if text {
		p.text = []string{addText.String(), repointText.String(), delText.String()}
	}
	p.batches = []*nft.Batch{adds, repoints, dels}
	return p, nil
}

// releaseBackends drops the marks of the backends of old that are gone in
// now (nil: the farm is removed), and records the connections to cut:
// those of backends that took traffic and are gone or Down.
func (b *Balancer) releaseBackends(p *plan, old Farm, now *Farm) {
	var still map[string]BackendState
	if now != nil {
		still = make(map[string]BackendState, len(now.Backends))
		for _, be := range now.Backends {
			still[be.Name] = be.State
		}
	}
	for _, be := range old.Backends {
		k := objectKey{old.Name, be.Name}
		state, ok := still[be.Name]
		if !ok {
			state = Down
		}
		if be.State != Down && state == Down {
			p.cut[k] = b.marks.owner[k]
		}
		if !ok {
			p.marks.drop(k)
		}
	}
}

// buildAll queues the whole ruleset, replacing the table if it exists, in
// one transaction: traffic sees the old table or the new one, never none.
func buildAll(batch *nft.Batch, o Options, farms map[string]*compiledFarm) {
	batch.AddTable()
	batch.DeleteTable()
	batch.AddTable()
	for _, s := range tableSets {
		batch.AddSet(s)
	}
	chains := baseChains(o)
	for _, c := range chains {
		batch.AddChain(c.Chain)
	}
	for _, name := range sortedKeys(farms) {
		if c := farms[name].chain; c != nil {
			queueChain(batch, c)
		}
	}
	// Sized first: 100,000s of elements appended one by one spent more
	// time growing slices than anything else in an install.
	sizes := map[string]int{}
	for _, c := range farms {
		for set, es := range c.elements {
			sizes[set] += len(es)
		}
	}
	elems := make(map[string][]nft.Element, len(allSets))
	for set, n := range sizes {
		elems[set] = make([]nft.Element, 0, n)
	}
	elems[setSchema.Name] = []nft.Element{schemaElement(o).Element}
	for _, e := range shardElements(o) {
		elems[setShards.Name] = append(elems[setShards.Name], e.Element)
	}
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
	for _, c := range chains {
		for _, rl := range c.rules {
			batch.AddRule(c.Name, rl.Rule)
		}
	}
}

// queueChain queues a regular chain and its rules, and the helper
// objects they name (adding one that exists changes nothing).
func queueChain(batch *nft.Batch, c *chain) {
	for _, h := range c.helpers {
		batch.AddHelper(h)
	}
	batch.AddChain(c.Chain)
	for _, rl := range c.rules {
		batch.AddRule(c.Name, rl.Rule)
	}
}

// writeChain writes a regular chain and its rules in nft syntax.
func writeChain(w *strings.Builder, table string, c *chain) {
	for _, h := range c.helpers {
		fmt.Fprintf(w, "add ct helper inet %s %s { type %q protocol %s; l3proto inet; }\n", table, h.Name, h.Helper, protoName(h.Proto))
	}
	fmt.Fprintf(w, "add chain inet %s %s\n", table, c.Name)
	for _, r := range c.rules {
		fmt.Fprintf(w, "add rule inet %s %s %s comment %q\n", table, c.Name, r.text, r.Comment)
	}
}
