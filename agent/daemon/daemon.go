package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// Errors the API maps to status codes; test with errors.Is.
var (
	// ErrNotFound: no such farm or backend.
	ErrNotFound = errors.New("not found")
	// ErrExists: creating a farm that exists.
	ErrExists = errors.New("already exists")
	// ErrConflict: the configuration file on disk is invalid or unreadable,
	// so a change cannot be built on it.
	ErrConflict = errors.New("configuration file conflict")
)

// Defaults of Options.
const (
	DefaultWatchInterval = time.Second
	// DefaultResyncInterval is short because a resync of a kernel nobody
	// changed costs one netlink round trip (lb.Balancer.Refresh compares
	// the ruleset generation), and drift is repaired within it.
	DefaultResyncInterval = time.Second
)

// Bounds of the exponential backoff between retries of a failed apply.
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 30 * time.Second
)

// Observer is told about applies and reloads, for metrics. Its methods
// are called with the lock that serialises changes held and must not
// call back into the daemon's changing methods.
type Observer interface {
	// ObserveApply reports one call to lb.Balancer.Apply, SetFarm or
	// RemoveFarm.
	ObserveApply(res lb.Result, err error)
	// ObserveReload reports one attempt to reload the file.
	ObserveReload(err error)
}

// Options configure a Daemon.
type Options struct {
	// ConfigPath is the configuration file, or a configuration directory
	// (see package config); required.
	ConfigPath string
	// NetNS is the name of the network namespace (ip netns) to act in;
	// empty means the agent's own.
	NetNS string
	// Logger receives the agent's log lines; default discard.
	Logger *slog.Logger
	// Observer is told about applies and reloads; optional.
	Observer Observer
	// WatchInterval is how often the file is polled for changes; default
	// DefaultWatchInterval, negative disables polling (SIGHUP still works).
	WatchInterval time.Duration
	// ResyncInterval is how often the kernel is checked and repaired;
	// default DefaultResyncInterval. Another program's change to the
	// table is repaired at once besides (lb.Balancer.Watch). Negative
	// disables both: drift is then repaired only on SIGHUP.
	ResyncInterval time.Duration
	// RunDir holds the instance locks; default DefaultRunDir.
	RunDir string
	// MaxFileSize is the largest configuration file read; default
	// DefaultMaxFileSize.
	MaxFileSize int64
	// Prepare, if set, is called with the configuration once the instance
	// lock is held and before anything is sent to the kernel; if it fails,
	// New fails with the kernel untouched. The command line validates and
	// binds the API there, so that a start that cannot serve changes
	// nothing.
	Prepare func(*config.Config) error
}

// Daemon keeps one balancer matching a configuration, the API's changes
// and the backends' health. Its methods are safe for concurrent use.
//
// Changes (API, reload, health, resync) are serialised by one lock and
// cost what the farms they touch hold. Readers (Status, the metrics,
// Farm, Farms) never take that lock: they copy what they need under a
// read lock that changes hold only for the instant of publishing a farm.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	obs     Observer
	lbOpts  lb.Options
	nsFile  *os.File // the balancer's namespace, for health checks
	lock    *instanceLock
	mon     *health.Monitor
	kick    chan struct{}
	failed  chan struct{} // an apply failed: arm the retry
	started time.Time
	dir     bool // ConfigPath is a configuration directory

	pendMu  sync.Mutex
	pending map[string]struct{} // farms whose backends changed health

	mu  sync.Mutex // serialises changes; held by everything below but view
	bal *lb.Balancer
	// The configuration in force. Farms are never modified once
	// published: a change publishes a new *config.Farm in place of the old.
	top      *config.Config // table, options and api; Farms unused
	farms    []*config.Farm // in the order of the file or directory
	index    map[string]*config.Farm
	needFull bool // a partial apply may have left the kernel elsewhere: retry the whole state
	whole    bool // the next reload applies the whole state (SIGHUP after a Refresh)
	applies  int  // calls to the library that may have changed the kernel
	// What is on disk.
	files    map[string]config.File // by path: as last loaded or written
	farmPath map[string]string      // directory: each farm's file
	frags    map[string][]byte      // single file: each farm's encoded item, re-encoded when it changes
	badSum   [32]byte               // the rejected content, not to reject it twice
	seenSum  [32]byte               // a change seen by the last poll, waiting to settle
	seenAt   time.Time              // when seenSum was first seen
	notify   *notifier              // inotify's news of the files; nil without inotify

	view sync.RWMutex // guards top, farms and index for readers that do not hold mu, and info
	info info
}

// info is what Status reports about the daemon's own history.
type info struct {
	configErr  *ConfigError
	applyErr   error
	last       ApplyInfo
	lastChange ApplyInfo
	changes    int
	rebuilds   int
	reloads    int
	rejected   int
	drifted    bool // the kernel was found to differ and is not repaired yet
	repairs    int
}

type nopObserver struct{}

func (nopObserver) ObserveApply(lb.Result, error) {}
func (nopObserver) ObserveReload(error)           {}

// New loads the configuration, takes the instance lock of the namespace
// and table, adopts the installed table, starts the health checks and
// makes the kernel match. Nothing is sent to the kernel before the
// configuration is valid, the lock is held and Options.Prepare succeeded;
// if the first apply fails the kernel is unchanged. Temporary files a
// crash left beside the configuration are removed once the lock is held.
func New(ctx context.Context, opts Options) (_ *Daemon, err error) {
	if opts.ConfigPath == "" {
		return nil, errors.New("no configuration file")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.WatchInterval == 0 {
		opts.WatchInterval = DefaultWatchInterval
	}
	if opts.ResyncInterval == 0 {
		opts.ResyncInterval = DefaultResyncInterval
	}
	if opts.RunDir == "" {
		opts.RunDir = DefaultRunDir
	}
	if opts.MaxFileSize <= 0 {
		opts.MaxFileSize = DefaultMaxFileSize
	}
	d := &Daemon{opts: opts, log: opts.Logger, obs: opts.Observer, kick: make(chan struct{}, 1), failed: make(chan struct{}, 1), started: time.Now(),
		dir: config.IsDir(opts.ConfigPath), pending: map[string]struct{}{}, files: map[string]config.File{},
		farmPath: map[string]string{}, frags: map[string][]byte{}}
	if d.obs == nil {
		d.obs = nopObserver{}
	}
	cfg, err := d.loadAll()
	if err != nil {
		return nil, err
	}
	d.publish(cfg)

	d.lbOpts = cfg.LBOptions()
	d.lbOpts.Logger = opts.Logger
	dial := health.DialFunc(nil)
	where := "the agent's own network namespace"
	if opts.NetNS != "" {
		path := filepath.Join("/run/netns", opts.NetNS)
		if d.nsFile, err = os.Open(path); err != nil {
			return nil, fmt.Errorf("opening network namespace %q: %w", opts.NetNS, err)
		}
		defer func() {
			if err != nil {
				d.nsFile.Close()
			}
		}()
		d.lbOpts.NetNS = nft.NetNSFd(int(d.nsFile.Fd()))
		dial = health.NetNSDialer(int(d.nsFile.Fd()))
		where = fmt.Sprintf("network namespace %q", opts.NetNS)
	}
	if d.lock, err = acquireLock(opts.RunDir, d.nsFile, cfg.TableName(), where); err != nil {
		return nil, err
	}
	// What the balancer leaves at Close spares the next start a full
	// read-back while nothing changed in the namespace.
	if d.lbOpts.StateFile, err = StateFile(opts.RunDir, d.nsFile, cfg.TableName()); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.lock.release()
		}
	}()
	d.removeStaleTemp()
	// Watching starts before the files are read, so that no edit made
	// after New returns goes unseen (the kernel queues the events until
	// Run reads them).
	if opts.WatchInterval >= 0 {
		if d.notify = newNotifier(opts.ConfigPath, d.dir); d.notify != nil {
			defer func() {
				if err != nil {
					d.notify.close()
				}
			}()
		}
	}
	if opts.Prepare != nil {
		if err := opts.Prepare(d.Config()); err != nil {
			return nil, err
		}
	}
	if d.bal, err = lb.Open(ctx, d.lbOpts); err != nil {
		return nil, fmt.Errorf("opening the balancer: %w", err)
	}
	defer func() {
		if err != nil {
			d.bal.Close()
		}
	}()
	d.mon = health.NewMonitor(health.Options{Dial: dial, Logger: opts.Logger, OnTransition: func(t health.Transition) {
		d.pendMu.Lock()
		d.pending[t.Key.Farm] = struct{}{}
		d.pendMu.Unlock()
		select {
		case d.kick <- struct{}{}:
		default: // a reconcile is already pending
		}
	}})

	// A backend the file says is up but that is installed drained was
	// drained by health before a restart: it must pass its checks again.
	installed := map[health.Key]lb.BackendState{}
	for _, f := range d.bal.State().Farms {
		for _, b := range f.Backends {
			installed[health.Key{Farm: f.Name, Backend: b.Name}] = b.State
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var targets []health.Target
	for _, f := range d.farms {
		for _, t := range f.HealthTargets() {
			b := f.Backends[slices.IndexFunc(f.Backends, func(b config.Backend) bool { return b.Name == t.Key.Backend })]
			t.StartUnhealthy = b.State == lb.Up && installed[t.Key] == lb.Drain
			targets = append(targets, t)
		}
	}
	d.mon.Update(targets)
	if err := d.reconcileLocked(ctx, "start"); err != nil {
		d.mon.Close()
		return nil, err
	}
	return d, nil
}

// removeStaleTemp removes the temporary files of writes a crash
// interrupted.
func (d *Daemon) removeStaleTemp() {
	var removed []string
	var err error
	if d.dir {
		removed, err = config.RemoveStaleTemp(d.opts.ConfigPath, "")
		r, err2 := config.RemoveStaleTemp(filepath.Join(d.opts.ConfigPath, config.FarmsDir), "")
		if errors.Is(err2, fs.ErrNotExist) {
			err2 = nil
		}
		removed, err = append(removed, r...), errors.Join(err, err2)
	} else {
		path := d.opts.ConfigPath
		if real, err := filepath.EvalSymlinks(path); err == nil {
			path = real
		}
		removed, err = config.RemoveStaleTemp(filepath.Dir(path), filepath.Base(path))
	}
	for _, p := range removed {
		d.log.Warn("removed a temporary file left by an interrupted write", "file", p)
	}
	if err != nil {
		d.log.Warn("could not remove stale temporary files", "err", err)
	}
}

// loadAll reads and validates the whole configuration, and records the
// files read.
func (d *Daemon) loadAll() (*config.Config, error) {
	if d.dir {
		if err := d.checkDirFiles(); err != nil {
			return nil, fmt.Errorf("reading configuration: %w", err)
		}
		cfg, files, err := config.LoadDir(d.opts.ConfigPath)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			d.files[f.Path] = f
		}
		for i := range cfg.Farms {
			d.farmPath[cfg.Farms[i].Name] = cfg.Farms[i].SourceFile()
		}
		return cfg, nil
	}
	file, data, err := readConfigFile(d.opts.ConfigPath, d.opts.MaxFileSize)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	cfg, err := config.ParseAndValidate(d.opts.ConfigPath, data)
	if err != nil {
		return nil, err
	}
	d.files[d.opts.ConfigPath] = file
	return cfg, nil
}

// checkDirFiles checks every file of the configuration directory as
// readConfigFile would, before config.LoadDir reads them.
func (d *Daemon) checkDirFiles() error {
	main := config.MainPath(d.opts.ConfigPath)
	if err := statFile(main, d.opts.MaxFileSize); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	list, err := config.FarmFiles(d.opts.ConfigPath)
	if err != nil {
		return err
	}
	for _, f := range list {
		if err := statFile(f.Path, d.opts.MaxFileSize); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// publish makes cfg the configuration in force.
func (d *Daemon) publish(cfg *config.Config) {
	top := *cfg
	top.Farms = nil
	farms := make([]*config.Farm, len(cfg.Farms))
	index := make(map[string]*config.Farm, len(cfg.Farms))
	for i := range cfg.Farms {
		farms[i] = &cfg.Farms[i]
		index[farms[i].Name] = farms[i]
	}
	d.view.Lock()
	d.top, d.farms, d.index = &top, farms, index
	d.view.Unlock()
}

// Run polls the configuration, reloads on request (a value on reload,
// such as SIGHUP), follows health transitions, re-reads the kernel to
// repair drift and retries failed applies with exponential backoff, until
// ctx is done. It leaves the data plane as it is; see Close.
func (d *Daemon) Run(ctx context.Context, reload <-chan struct{}) error {
	watch := ticker(d.opts.WatchInterval)
	defer watch.Stop()
	resync := ticker(d.opts.ResyncInterval)
	defer resync.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	var backoff time.Duration // the wait before the armed retry; 0 when none is armed
	// Another program's change to our table is repaired at once; the
	// resync tick stays as a backstop (and costs one round trip when
	// nothing changed).
	drift := make(chan struct{}, 1)
	if d.opts.ResyncInterval >= 0 {
		go d.watch(ctx, drift)
	}
	// An edit is seen at once through inotify, looked at after a short
	// quiet time and loaded once it looks the same twice (the settle rule
	// of the polling tick, which stays as the backstop).
	n := d.notify
	var notified <-chan struct{}
	var pending []string
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	if n != nil {
		go n.run(ctx)
		notified = n.kick
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-notified:
			paths, all := n.take()
			if all { // events were lost: look at everything, as the tick does
				l := d.listFiles()
				d.mu.Lock()
				d.reloadListedLocked(ctx, true, l)
				d.mu.Unlock()
			}
			for _, p := range paths {
				if !slices.Contains(pending, p) {
					pending = append(pending, p)
				}
			}
			settle.Reset(notifySettle)
			continue
		case <-settle.C:
			if len(pending) == 0 {
				continue
			}
			l := d.listSome(pending)
			d.mu.Lock()
			before := d.seenAt
			d.reloadListedLocked(ctx, true, l)
			waiting := d.seenAt != before
			d.mu.Unlock()
			if waiting {
				settle.Reset(notifySettle) // seen once: look again
			} else {
				pending = nil
			}
		case <-drift:
			d.log.Info("another program changed the table")
			if err := d.Resync(ctx); err != nil {
				d.log.Error("re-reading the kernel failed", "err", err)
			}
		case <-reload:
			d.log.Info("reload requested")
			d.hangup(ctx)
		case <-watch.C:
			l := d.listFiles() // the stats, without the lock
			d.mu.Lock()
			d.reloadListedLocked(ctx, true, l)
			d.mu.Unlock()
		case <-resync.C:
			if err := d.Resync(ctx); err != nil {
				d.log.Error("re-reading the kernel failed", "err", err)
			}
		case <-d.kick:
			d.applyHealth(ctx)
		case <-d.failed:
		case <-retry.C:
			d.mu.Lock()
			if d.failingLocked() {
				d.reconcileLocked(ctx, "retry")
			}
			d.mu.Unlock()
			backoff = nextBackoff(backoff)
			if !d.failing() {
				backoff = 0
				continue
			}
			retry.Reset(backoff)
			continue
		}
		switch failing := d.failing(); {
		case failing && backoff == 0:
			backoff = minRetry
			retry.Reset(backoff)
		case !failing && backoff != 0:
			retry.Stop()
			backoff = 0
		}
	}
}

// watch reports on drift another program's changes to the table, until
// ctx is done.
func (d *Daemon) watch(ctx context.Context, drift chan<- struct{}) {
	err := d.bal.Watch(ctx, func() {
		select {
		case drift <- struct{}{}:
		default:
		}
	})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("watching the kernel for changes failed; relying on the resync interval", "err", err)
	}
}

// notifySettle is how long the files must be quiet after an inotify event
// before they are looked at, and between the two looks that must agree.
const notifySettle = 20 * time.Millisecond

// nextBackoff doubles the wait between retries, from minRetry up to
// maxRetry.
func nextBackoff(cur time.Duration) time.Duration {
	return min(max(2*cur, minRetry), maxRetry)
}

// failing reports whether the kernel may not match: the last apply failed
// or left it part-way.
func (d *Daemon) failing() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failingLocked()
}

func (d *Daemon) failingLocked() bool {
	return d.needFull || d.info.applyErr != nil
}

// hangup is SIGHUP: re-read the kernel, then reload the files and make
// the kernel match with one apply of the whole state, or, if the files did
// not change (or are rejected), repair it with the configuration in force.
func (d *Daemon) hangup(ctx context.Context) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.bal.Refresh(ctx); err != nil {
		d.log.Error("re-reading the kernel failed", "err", err)
	}
	before := d.applies
	d.whole = true
	d.reloadLocked(ctx, false) // logged inside
	d.whole = false
	if d.applies == before {
		d.repairLocked(ctx, "resync")
	}
}

// ticker returns a ticker, stopped if every is negative.
func ticker(every time.Duration) *time.Ticker {
	if every < 0 {
		t := time.NewTicker(time.Hour)
		t.Stop()
		return t
	}
	return time.NewTicker(every)
}

// Close stops the health checks and releases the balancer. With remove it
// first deletes the agent's table (--cleanup-on-exit); otherwise the data
// plane keeps running exactly as it is.
func (d *Daemon) Close(ctx context.Context, remove bool) error {
	d.mon.Close()
	if d.notify != nil {
		d.notify.close()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if remove {
		errs = append(errs, d.bal.Remove(ctx))
	}
	errs = append(errs, d.bal.Close())
	if d.nsFile != nil {
		errs = append(errs, d.nsFile.Close())
	}
	errs = append(errs, d.lock.release())
	return errors.Join(errs...)
}

// applyHealth re-applies the farms whose backends changed health, and
// only them.
func (d *Daemon) applyHealth(ctx context.Context) {
	d.pendMu.Lock()
	names := slices.Sorted(maps.Keys(d.pending))
	clear(d.pending)
	d.pendMu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range names {
		f := d.index[name]
		if f == nil {
			continue // deleted meanwhile
		}
		res, err := d.bal.SetFarm(ctx, d.effective(f))
		if d.recordLocked("health", res, err) != nil {
			d.needFull = true
		}
	}
}

// effective is the farm to install: f, with up backends failing their
// checks drained.
func (d *Daemon) effective(f *config.Farm) lb.Farm {
	out := f.LB()
	for bi := range out.Backends {
		b := &out.Backends[bi]
		if b.State == lb.Up && !d.mon.Healthy(health.Key{Farm: f.Name, Backend: b.Name}) {
			b.State = lb.Drain
		}
	}
	return out
}

// effectiveLocked is the whole state to install.
func (d *Daemon) effectiveLocked() lb.State {
	s := lb.State{Farms: make([]lb.Farm, 0, len(d.farms))}
	for _, f := range d.farms {
		s.Farms = append(s.Farms, d.effective(f))
	}
	return s
}

// reconcileLocked applies the whole effective state: at start, on resync
// and to retry after a failure.
func (d *Daemon) reconcileLocked(ctx context.Context, reason string) error {
	res, err := d.bal.Apply(ctx, d.effectiveLocked())
	if err := d.recordLocked(reason, res, err); err != nil {
		return err
	}
	d.needFull = false
	return nil
}

// recordLocked reports one apply to the observer and the status.
func (d *Daemon) recordLocked(reason string, res lb.Result, err error) error {
	d.obs.ObserveApply(res, err)
	d.view.Lock()
	defer d.view.Unlock()
	in := &d.info
	if err != nil {
		if errors.Is(err, lb.ErrInvalid) {
			return err // refused before the kernel: nothing changed
		}
		d.applies++
		select {
		case d.failed <- struct{}{}:
		default:
		}
		if in.applyErr == nil || in.applyErr.Error() != err.Error() {
			d.log.Error("apply failed", "reason", reason, "err", err)
		}
		in.applyErr = err
		return err
	}
	d.applies++
	in.applyErr = nil
	in.last = ApplyInfo{Time: time.Now(), Reason: reason, Changed: res.Changed, Rebuilt: res.Rebuilt && res.Changed,
		Messages: res.Messages, Elements: res.Elements, Duration: res.Duration}
	if res.Changed {
		in.lastChange = in.last
		in.changes++
		if res.Rebuilt {
			in.rebuilds++
		}
	}
	return nil
}

// Resync re-reads the kernel and repairs any difference from the desired
// state (a table, chain, rule or element deleted or edited behind the
// agent's back). When nothing changed in the namespace it costs one
// netlink round trip.
func (d *Daemon) Resync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	read, err := d.bal.Refresh(ctx)
	if err != nil {
		return fmt.Errorf("re-reading the kernel: %w", err)
	}
	if !read && !d.failingLocked() && !d.info.drifted {
		return nil // nothing changed in our table: nothing to compare
	}
	return d.repairLocked(ctx, "resync")
}

// repairLocked applies the whole effective state after a Refresh and
// counts a change it makes as a repair of drift, unless it only finishes
// a change that had failed.
func (d *Daemon) repairLocked(ctx context.Context, reason string) error {
	retrying := d.failingLocked()
	if err := d.reconcileLocked(ctx, reason); err != nil {
		d.setInfo(func(in *info) { in.drifted = true })
		return err
	}
	last := d.info.last
	if !last.Changed && !d.info.drifted {
		return nil
	}
	d.setInfo(func(in *info) {
		if last.Changed && !retrying {
			in.repairs++
		}
		in.drifted = false
	})
	if last.Changed {
		d.log.Warn("the kernel differed from the desired state and was repaired", "table", d.lbOpts.Table, "rebuilt", last.Rebuilt)
	}
	return nil
}

// Config returns a copy of the configuration in force. It costs a copy of
// every farm.
func (d *Daemon) Config() *config.Config {
	d.view.RLock()
	defer d.view.RUnlock()
	c := *d.top
	c.Farms = make([]config.Farm, len(d.farms))
	for i, f := range d.farms {
		c.Farms[i] = f.Clone()
	}
	return &c
}

// Render returns the ruleset installed, in nft syntax.
func (d *Daemon) Render() string {
	return d.bal.Render()
}

// Healthz returns nil while the kernel matches the desired state.
func (d *Daemon) Healthz() error {
	d.view.RLock()
	defer d.view.RUnlock()
	if err := d.info.applyErr; err != nil {
		return fmt.Errorf("the last apply failed: %w", err)
	}
	if d.info.drifted {
		return errors.New("the kernel differs from the desired state and is not repaired yet")
	}
	return nil
}

// Status returns the configured farms with their installed state, health
// and counters. It reads the counters without the lock that serialises
// changes: a scrape never delays a change.
func (d *Daemon) Status(ctx context.Context) (Status, error) {
	d.view.RLock()
	farms := slices.Clone(d.farms)
	in := d.info
	d.view.RUnlock()

	ls, err := d.bal.Status(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("reading status: %w", err)
	}
	installed := make(map[string]*lb.FarmStatus, len(ls.Farms))
	for i := range ls.Farms {
		installed[ls.Farms[i].Name] = &ls.Farms[i]
	}
	st := Status{Table: d.lbOpts.Table, NetNS: d.opts.NetNS, Config: d.opts.ConfigPath, StartedAt: d.started,
		ConfigError: in.configErr, LastApply: in.last, LastChange: in.lastChange, Changes: in.changes, Rebuilds: in.rebuilds,
		Reloads: in.reloads, Rejected: in.rejected, Drifted: in.drifted, Repairs: in.repairs, Farms: make([]FarmStatus, 0, len(farms))}
	if in.applyErr != nil {
		st.ApplyError = in.applyErr.Error()
	}
	for _, f := range farms {
		fs := FarmStatus{Backends: make([]BackendStatus, 0, len(f.Backends))}
		fs.Farm = f.Farm
		fs.Farm.Backends = nil
		var live map[string]*lb.BackendStatus
		if lf := installed[f.Name]; lf != nil {
			fs.PersistenceEntries = lf.PersistenceEntries
			fs.Rejected = lf.Rejected
			live = make(map[string]*lb.BackendStatus, len(lf.Backends))
			for i := range lf.Backends {
				live[lf.Backends[i].Name] = &lf.Backends[i]
			}
		}
		for _, b := range f.Backends {
			bs := BackendStatus{BackendStatus: lb.BackendStatus{Backend: b.Backend}}
			if in := live[b.Name]; in != nil {
				bs.Installed, bs.Effective, bs.Mark = true, in.State, in.Mark
				bs.Connections, bs.Packets, bs.Bytes = in.Connections, in.Packets, in.Bytes
			}
			if h, ok := d.mon.Status(health.Key{Farm: f.Name, Backend: b.Name}); ok {
				bs.Health = &h
			}
			fs.Connections += bs.Connections
			fs.Packets += bs.Packets
			fs.Bytes += bs.Bytes
			fs.Backends = append(fs.Backends, bs)
		}
		st.Farms = append(st.Farms, fs)
	}
	return st, nil
}
