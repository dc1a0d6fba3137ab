package lb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4nft/l4nft/nft"
)

// Balancer makes one nftables table in one network namespace match a
// desired State. It is safe for concurrent use; applies are serialised.
type Balancer struct {
	mu   sync.Mutex
	opts Options
	// conn carries commits and read-backs over one lasting socket; stats
	// has a socket of its own, so that reading counters never waits for a
	// commit and a commit never waits for a counter dump.
	conn, stats kernel
	// flush cuts a backend's connections (Options.FlushConntrack).
	flush conntrackFlusher

	// What the kernel holds, as far as this Balancer knows: read by Open,
	// then kept up to date by every successful commit.
	farms map[string]*compiledFarm
	// order is the farms' names in the order last applied.
	order []string
	marks *markTable
	// services indexes the installed farms' services, for SetFarm's
	// conflict check.
	services serviceIndex
	// orphans are elements an adopted table held that no farm claims;
	// their marks stay reserved until the next Apply deletes them.
	orphans elements
	// orphanChains are farm chains an adopted table held that no farm
	// claims; the next Apply deletes them with the orphans.
	orphanChains []string
	// rebuild says the table is missing or has another layout: the next
	// Apply replaces it whole, in one transaction.
	rebuild bool
	// gen is the ruleset generation after our last commit or read: while
	// the kernel reports the same, nobody changed anything since.
	gen uint32
	// watching is set while Watch listens; foreign, when it reported a
	// change to our table since the last read-back.
	watching, foreign atomic.Bool
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
	stats, err := nft.Open(opts.NetNS)
	if err != nil {
		conn.Close()
		return nil, err
	}
	flush := func(mask uint32, marks []uint32) error { return flushConntrack(conn.NetNSFd(), mask, marks) }
	b, err := open(ctx, opts, conn, stats, flush)
	if err != nil {
		conn.Close()
		stats.Close()
		return nil, err
	}
	return b, nil
}

// open makes a Balancer over any kernel and adopts what it holds.
func open(ctx context.Context, opts Options, conn, stats kernel, flush conntrackFlusher) (*Balancer, error) {
	b := &Balancer{opts: opts, conn: conn, stats: stats, flush: flush}
	b.reset()
	if b.loadStateFile() {
		return b, nil
	}
	if err := b.readKernel(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// Close writes the state file (Options.StateFile) and releases the
// connection. The ruleset stays in the kernel.
func (b *Balancer) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return errors.Join(b.saveStateFile(), b.conn.Close(), b.stats.Close())
}

// Refresh makes sure the Balancer knows what the kernel holds, after
// someone else may have changed or deleted the table: the next Apply then
// repairs it. It reports whether it read the table back. It does not when
// the namespace's ruleset generation is the one seen after the Balancer's
// last commit, nor, while Watch runs, when the changes since were all to
// other tables: then it costs one netlink round trip. Otherwise it reads
// the table back, as Open does. It sends nothing.
func (b *Balancer) Refresh(ctx context.Context) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	gen, err := b.conn.Generation()
	if err == nil && b.gen != 0 {
		if gen == b.gen {
			return false, nil
		}
		if b.watching.Load() && !b.foreign.Load() {
			b.gen = gen // other tables changed; ours did not
			return false, nil
		}
	}
	b.foreign.Store(false)
	return true, b.readKernel(ctx)
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
		s.Farms = append(s.Farms, b.farms[name].spec.Clone())
	}
	return s
}

// Result describes what an Apply sent to the kernel.
type Result struct {
	// Changed is false when the kernel already matched: nothing was sent.
	Changed bool
	// Rebuilt says the whole table was (re)created.
	Rebuilt bool
	// Transactions, Messages and Elements count what was sent.
	Transactions, Messages, Elements int
	// MarkCollisions counts the marks that were not the first choice of
	// their object's name because another object held it. Such a mark
	// depends on the order of installation: a node that reached the same
	// state by other steps may have given it differently.
	MarkCollisions int
	// FlushedConntrack lists the backends whose connections were cut.
	FlushedConntrack []string
	// Duration is the time spent in kernel transactions.
	Duration time.Duration
}

// Apply makes the kernel match s. It validates s first and returns a
// *ValidationError (errors.Is ErrInvalid) listing every problem without
// touching the kernel. Otherwise it sends the difference between what is
// installed and s. Applying what is installed sends nothing; changing one
// backend sends that backend's elements and its farm's changed schedule
// ranges, whatever the number of farms. See the package doc for how a
// change is split into transactions so that no connection is refused.
func (b *Balancer) Apply(ctx context.Context, s State) (Result, error) {
	if err := Validate(s, b.opts); err != nil {
		return Result{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.apply(ctx, s.Farms, true)
}

// SetFarm adds f, or replaces the installed farm of that name, and leaves
// every other farm as it is. It validates f alone and its services
// against the other farms' through an index, so its cost is that of the
// farm, not of the whole State. Invalid, it returns a *ValidationError
// and changes nothing.
func (b *Balancer) SetFarm(ctx context.Context, f Farm) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.validateFarm(f); err != nil {
		return Result{}, err
	}
	return b.apply(ctx, []Farm{f}, false)
}

// RemoveFarm deletes one farm and leaves the others untouched. It fails
// with ErrNoFarm if no farm of that name is installed.
func (b *Balancer) RemoveFarm(ctx context.Context, name string) (Result, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.farms[name] == nil {
		return Result{}, fmt.Errorf("removing farm %q: %w", name, ErrNoFarm)
	}
	return b.applyChanges(ctx, nil, []string{name}, nil)
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
	b.services = serviceIndex{}
	b.orphans, b.orphanChains = elements{}, nil
	b.gen = 0
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

// Watch calls drifted whenever another process changes the Balancer's
// table (or notifications were lost), until ctx is done; it blocks. A
// caller typically answers with Refresh and Apply, which repair the
// smallest difference: a changed farm's elements, or the whole table if
// its chains, rules or sets are not what they should be. Changes made by
// this process do not count.
//
// While it runs, Refresh skips the read-back when the namespace's ruleset
// changed in other tables only, which on a host where other programs
// change their rules all the time saves a full read every time.
func (b *Balancer) Watch(ctx context.Context, drifted func()) error {
	w, ok := b.conn.(interface {
		Watch(ctx context.Context, table string, ready, changed func()) error
	})
	if !ok {
		return errors.New("this kernel connection cannot watch for changes")
	}
	defer b.watching.Store(false)
	return w.Watch(ctx, b.opts.Table, func() {
		// Changes made before the watcher listened are unknown: the
		// next Refresh reads back once.
		b.foreign.Store(true)
		b.watching.Store(true)
	}, func() {
		b.foreign.Store(true)
		drifted()
	})
}
