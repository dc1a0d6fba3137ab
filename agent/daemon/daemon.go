package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
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
	DefaultWatchInterval  = time.Second
	DefaultResyncInterval = time.Minute
)

// Observer is told about applies and reloads, for metrics. Its methods
// are called with the daemon's lock held and must not call back into it.
type Observer interface {
	// ObserveApply reports one call to lb.Balancer.Apply.
	ObserveApply(res lb.Result, err error)
	// ObserveReload reports one attempt to reload the file.
	ObserveReload(err error)
}

// Options configure a Daemon.
type Options struct {
	// ConfigPath is the configuration file; required.
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
	// ResyncInterval is how often the kernel is re-read and repaired;
	// default DefaultResyncInterval, negative disables it.
	ResyncInterval time.Duration
}

// Daemon keeps one balancer matching a configuration file, the API's
// changes and the backends' health. Its methods are safe for concurrent
// use.
type Daemon struct {
	opts    Options
	log     *slog.Logger
	obs     Observer
	lbOpts  lb.Options
	nsFile  *os.File // the balancer's namespace, for health checks
	mon     *health.Monitor
	kick    chan struct{}
	started time.Time

	mu         sync.Mutex
	bal        *lb.Balancer
	cfg        *config.Config // in force: the file's content as last loaded or written
	fileSum    [32]byte       // hash of that content
	badSum     [32]byte       // hash of the last rejected content, not to reject it twice
	seenSum    [32]byte       // hash of a new content seen by the last poll, waiting to settle
	configErr  *ConfigError
	applyErr   error
	last       ApplyInfo
	lastChange ApplyInfo
	changes    int
	rebuilds   int
	reloads    int
	rejected   int
}

type nopObserver struct{}

func (nopObserver) ObserveApply(lb.Result, error) {}
func (nopObserver) ObserveReload(error)           {}

// New loads the configuration file, adopts the installed table in the
// namespace, starts the health checks and makes the kernel match. It fails
// if the file is invalid or the apply fails; the kernel is then unchanged.
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
	d := &Daemon{opts: opts, log: opts.Logger, obs: opts.Observer, kick: make(chan struct{}, 1), started: time.Now()}
	if d.obs == nil {
		d.obs = nopObserver{}
	}
	data, err := os.ReadFile(opts.ConfigPath)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	cfg, err := config.ParseAndValidate(opts.ConfigPath, data)
	if err != nil {
		return nil, err
	}
	d.cfg, d.fileSum = cfg, sha256.Sum256(data)

	d.lbOpts = cfg.LBOptions()
	d.lbOpts.Logger = opts.Logger
	dial := health.DialFunc(nil)
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
	}
	if d.bal, err = lb.Open(ctx, d.lbOpts); err != nil {
		return nil, fmt.Errorf("opening the balancer: %w", err)
	}
	defer func() {
		if err != nil {
			d.bal.Close()
		}
	}()
	d.mon = health.NewMonitor(health.Options{Dial: dial, Logger: opts.Logger, OnTransition: func(health.Transition) {
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
	d.updateHealthLocked(func(t *health.Target, b config.Backend) {
		t.StartUnhealthy = b.State == lb.Up && installed[t.Key] == lb.Drain
	})
	if err := d.reconcileLocked(ctx, "start"); err != nil {
		d.mon.Close()
		return nil, err
	}
	return d, nil
}

// Run polls the file, reloads on request (a value on reload, such as
// SIGHUP), follows health transitions and retries failed applies, until
// ctx is done. It leaves the data plane as it is; see Close.
func (d *Daemon) Run(ctx context.Context, reload <-chan struct{}) error {
	watch := ticker(d.opts.WatchInterval)
	defer watch.Stop()
	resync := ticker(d.opts.ResyncInterval)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-reload:
			d.log.Info("reload requested")
			if err := d.Resync(ctx); err != nil {
				d.log.Error("re-reading the kernel failed", "err", err)
			}
			d.Reload(ctx) // logged inside
		case <-watch.C:
			d.mu.Lock()
			d.pollFileLocked(ctx)
			if d.applyErr != nil {
				d.reconcileLocked(ctx, "retry")
			}
			d.mu.Unlock()
		case <-resync.C:
			if err := d.Resync(ctx); err != nil {
				d.log.Error("re-reading the kernel failed", "err", err)
			}
		case <-d.kick:
			d.mu.Lock()
			d.reconcileLocked(ctx, "health")
			d.mu.Unlock()
		}
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
	return errors.Join(errs...)
}

// Reload reads the file and, if it is valid, applies it. It returns the
// *config.Error of an invalid file, which leaves everything as it was.
func (d *Daemon) Reload(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	data, err := os.ReadFile(d.opts.ConfigPath)
	if err != nil {
		d.rejectLocked(err, nil)
		return err
	}
	return d.loadLocked(ctx, data, true)
}

// pollFileLocked reloads the file once a new content has been seen
// unchanged by two consecutive polls: a file being written in place can
// be caught half written, and half a file may well be valid YAML.
func (d *Daemon) pollFileLocked(ctx context.Context) {
	data, err := os.ReadFile(d.opts.ConfigPath)
	if err != nil {
		d.syncFileLocked(ctx) // reports it
		return
	}
	sum := sha256.Sum256(data)
	if sum != d.fileSum && sum != d.badSum && sum != d.seenSum {
		d.seenSum = sum // wait one interval for the writer to finish
		return
	}
	d.loadIfChangedLocked(ctx, data)
}

// syncFileLocked reloads the file at once if its content changed since
// it was last loaded or written. It returns an error if the file on disk
// cannot be loaded (so that it is not overwritten).
func (d *Daemon) syncFileLocked(ctx context.Context) error {
	data, err := os.ReadFile(d.opts.ConfigPath)
	if err != nil {
		if d.configErr == nil || d.configErr.Message != err.Error() {
			d.rejectLocked(err, nil)
		}
		return err
	}
	return d.loadIfChangedLocked(ctx, data)
}

func (d *Daemon) loadIfChangedLocked(ctx context.Context, data []byte) error {
	sum := sha256.Sum256(data)
	switch {
	case sum == d.fileSum:
		if d.configErr != nil { // back to the content in force
			d.log.Info("configuration file is back to the version in force", "file", d.opts.ConfigPath)
			d.configErr, d.badSum = nil, [32]byte{}
		}
		return nil
	case sum == d.badSum && d.configErr != nil:
		return errors.New(d.configErr.Message)
	}
	return d.loadLocked(ctx, data, false)
}

// loadLocked parses, validates and applies data, the file's content.
func (d *Daemon) loadLocked(ctx context.Context, data []byte, force bool) error {
	sum := sha256.Sum256(data)
	if sum == d.fileSum && !force {
		return nil
	}
	d.reloads++
	cfg, err := config.ParseAndValidate(d.opts.ConfigPath, data)
	if err != nil {
		d.badSum = sum
		var ce *config.Error
		if errors.As(err, &ce) {
			d.rejectLocked(err, ce.Problems)
		} else {
			d.rejectLocked(err, nil)
		}
		return err
	}
	d.warnRestartLocked(cfg)
	d.cfg, d.fileSum, d.configErr, d.badSum = cfg, sum, nil, [32]byte{}
	d.updateHealthLocked(nil)
	if err := d.reconcileLocked(ctx, "reload"); err != nil {
		// The kernel refused it: keep running what runs, and retry.
		d.obs.ObserveReload(err)
		d.log.Error("configuration valid but not applied; retrying", "file", d.opts.ConfigPath, "err", err)
		return err
	}
	d.obs.ObserveReload(nil)
	d.log.Info("configuration reloaded", "file", d.opts.ConfigPath, "farms", len(cfg.Farms))
	return nil
}

func (d *Daemon) rejectLocked(err error, problems []config.Problem) {
	d.rejected++
	d.obs.ObserveReload(err)
	d.configErr = &ConfigError{Time: time.Now(), Message: err.Error(), Problems: problems}
	args := []any{"file", d.opts.ConfigPath, "err", err}
	if len(problems) > 0 {
		args = []any{"file", d.opts.ConfigPath, "problems", len(problems)}
		for i, p := range problems {
			args = append(args, fmt.Sprintf("problem%d", i+1), p.String())
		}
	}
	d.log.Error("configuration rejected; still running the previous one", args...)
}

// warnRestartLocked logs the settings that only a restart changes.
func (d *Daemon) warnRestartLocked(next *config.Config) {
	cur := d.cfg
	if next.TableName() != cur.TableName() || next.Options != cur.Options {
		d.log.Warn("table and options changes take effect at the next restart", "table", cur.TableName(), "new_table", next.TableName())
	}
	if next.API != cur.API {
		d.log.Warn("api changes take effect at the next restart")
	}
}

// updateHealthLocked gives the monitor the checks of d.cfg; adjust, if
// not nil, may change each target.
func (d *Daemon) updateHealthLocked(adjust func(*health.Target, config.Backend)) {
	var targets []health.Target
	for _, f := range d.cfg.Farms {
		for _, b := range f.Backends {
			spec, addr, err := f.HealthSpec(b)
			if err != nil || spec.Type == health.None {
				continue
			}
			t := health.Target{Key: health.Key{Farm: f.Name, Backend: b.Name}, Addr: addr, Spec: spec}
			if adjust != nil {
				adjust(&t, b)
			}
			targets = append(targets, t)
		}
	}
	d.mon.Update(targets)
}

// effectiveLocked is the state to install: the file's, with up backends
// failing their checks drained.
func (d *Daemon) effectiveLocked() lb.State {
	s := d.cfg.State()
	for fi := range s.Farms {
		f := &s.Farms[fi]
		for bi := range f.Backends {
			b := &f.Backends[bi]
			if b.State == lb.Up && !d.mon.Healthy(health.Key{Farm: f.Name, Backend: b.Name}) {
				b.State = lb.Drain
			}
		}
	}
	return s
}

// reconcileLocked applies the effective state.
func (d *Daemon) reconcileLocked(ctx context.Context, reason string) error {
	res, err := d.bal.Apply(ctx, d.effectiveLocked())
	d.obs.ObserveApply(res, err)
	if err != nil {
		if d.applyErr == nil || d.applyErr.Error() != err.Error() {
			d.log.Error("apply failed", "reason", reason, "err", err)
		}
		d.applyErr = err
		return err
	}
	d.applyErr = nil
	d.last = ApplyInfo{Time: time.Now(), Reason: reason, Changed: res.Changed, Rebuilt: res.Rebuilt && res.Changed,
		Messages: res.Messages, Elements: res.Elements, Duration: res.Duration}
	if res.Changed {
		d.lastChange = d.last
		d.changes++
		if res.Rebuilt {
			d.rebuilds++
		}
	}
	return nil
}

// Resync re-reads the kernel and repairs any difference from the desired
// state (a table deleted or edited behind the agent's back).
func (d *Daemon) Resync(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.bal.Refresh(ctx); err != nil {
		return fmt.Errorf("re-reading the kernel: %w", err)
	}
	if err := d.reconcileLocked(ctx, "resync"); err != nil {
		return err
	}
	if d.last.Changed {
		d.log.Warn("the kernel differed from the desired state and was repaired", "table", d.lbOpts.Table, "rebuilt", d.last.Rebuilt)
	}
	return nil
}

// Config returns a copy of the configuration in force.
func (d *Daemon) Config() *config.Config {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cfg.Clone()
}

// Render returns the ruleset installed, in nft syntax.
func (d *Daemon) Render() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.bal.Render()
}

// Healthz returns nil while the kernel matches the desired state.
func (d *Daemon) Healthz() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applyErr != nil {
		return fmt.Errorf("the last apply failed: %w", d.applyErr)
	}
	return nil
}

// Status returns the configured farms with their installed state, health
// and counters.
func (d *Daemon) Status(ctx context.Context) (Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ls, err := d.bal.Status(ctx)
	if err != nil {
		return Status{}, fmt.Errorf("reading status: %w", err)
	}
	installed := map[health.Key]lb.BackendStatus{}
	for _, f := range ls.Farms {
		for _, b := range f.Backends {
			installed[health.Key{Farm: f.Name, Backend: b.Name}] = b
		}
	}
	st := Status{Table: d.lbOpts.Table, NetNS: d.opts.NetNS, Config: d.opts.ConfigPath, StartedAt: d.started,
		ConfigError: d.configErr, LastApply: d.last, LastChange: d.lastChange, Changes: d.changes, Rebuilds: d.rebuilds,
		Reloads: d.reloads, Rejected: d.rejected, Farms: []FarmStatus{}}
	if d.applyErr != nil {
		st.ApplyError = d.applyErr.Error()
	}
	for _, f := range d.cfg.Farms {
		fs := FarmStatus{Name: f.Name, Address: f.Address, Ports: f.Ports, Protocol: f.Protocol, Mode: f.Mode,
			Scheduler: f.Scheduler, Source: f.Source, Backends: []BackendStatus{}}
		for _, b := range f.Backends {
			k := health.Key{Farm: f.Name, Backend: b.Name}
			bs := BackendStatus{Name: b.Name, Address: b.Address, Port: b.Port, Weight: b.Weight, State: b.State}
			if in, ok := installed[k]; ok {
				bs.Installed, bs.Effective, bs.Mark = true, in.State, in.Mark
				bs.Connections, bs.Packets, bs.Bytes = in.Connections, in.Packets, in.Bytes
			}
			if h, ok := d.mon.Status(k); ok {
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

// BackendChange changes one backend; nil fields stay as they are.
type BackendChange struct {
	Weight *int             `json:"weight,omitempty"`
	State  *lb.BackendState `json:"state,omitempty"`
}

// Farms returns the configured farms.
func (d *Daemon) Farms() []config.Farm {
	return d.Config().Farms
}

// Farm returns the farm named name, or ErrNotFound.
func (d *Daemon) Farm(name string) (config.Farm, error) {
	f, ok := d.Config().Farm(name)
	if !ok {
		return config.Farm{}, fmt.Errorf("farm %q: %w", name, ErrNotFound)
	}
	return f, nil
}

// CreateFarm adds a farm; ErrExists if one has its name.
func (d *Daemon) CreateFarm(ctx context.Context, f config.Farm) error {
	return d.mutate(ctx, "api: create farm "+f.Name, func(c *config.Config) error {
		if _, ok := c.Farm(f.Name); ok {
			return fmt.Errorf("farm %q: %w", f.Name, ErrExists)
		}
		c.Farms = append(c.Farms, f)
		return nil
	})
}

// PutFarm creates or replaces the farm named f.Name and reports whether it
// was created.
func (d *Daemon) PutFarm(ctx context.Context, f config.Farm) (created bool, err error) {
	err = d.mutate(ctx, "api: put farm "+f.Name, func(c *config.Config) error {
		i := slices.IndexFunc(c.Farms, func(x config.Farm) bool { return x.Name == f.Name })
		if i < 0 {
			created = true
			c.Farms = append(c.Farms, f)
		} else {
			c.Farms[i] = f
		}
		return nil
	})
	return created, err
}

// DeleteFarm removes a farm; ErrNotFound if there is none.
func (d *Daemon) DeleteFarm(ctx context.Context, name string) error {
	return d.mutate(ctx, "api: delete farm "+name, func(c *config.Config) error {
		i := slices.IndexFunc(c.Farms, func(x config.Farm) bool { return x.Name == name })
		if i < 0 {
			return fmt.Errorf("farm %q: %w", name, ErrNotFound)
		}
		c.Farms = slices.Delete(c.Farms, i, i+1)
		return nil
	})
}

// SetBackend changes one backend's weight or state and returns it.
func (d *Daemon) SetBackend(ctx context.Context, farm, backend string, ch BackendChange) (config.Backend, error) {
	var out config.Backend
	err := d.mutate(ctx, fmt.Sprintf("api: backend %s/%s", farm, backend), func(c *config.Config) error {
		i := slices.IndexFunc(c.Farms, func(x config.Farm) bool { return x.Name == farm })
		if i < 0 {
			return fmt.Errorf("farm %q: %w", farm, ErrNotFound)
		}
		bs := c.Farms[i].Backends
		j := slices.IndexFunc(bs, func(x config.Backend) bool { return x.Name == backend })
		if j < 0 {
			return fmt.Errorf("backend %q of farm %q: %w", backend, farm, ErrNotFound)
		}
		if ch.Weight != nil {
			bs[j].Weight = *ch.Weight
		}
		if ch.State != nil {
			bs[j].State = *ch.State
		}
		out = bs[j]
		return nil
	})
	return out, err
}

// mutate applies change to a copy of the configuration, validates it,
// applies it to the kernel and writes it to the file.
func (d *Daemon) mutate(ctx context.Context, reason string, change func(*config.Config) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.syncFileLocked(ctx); err != nil {
		return fmt.Errorf("%w: %s cannot be loaded, fix it first: %w", ErrConflict, d.opts.ConfigPath, err)
	}
	prev := d.cfg
	next := prev.Clone()
	if err := change(next); err != nil {
		return err
	}
	if err := config.Validate(next); err != nil {
		return err
	}
	data, err := next.Marshal(d.opts.ConfigPath)
	if err != nil {
		return err
	}
	prevErr := d.applyErr
	d.cfg = next
	d.updateHealthLocked(nil)
	if err := d.reconcileLocked(ctx, reason); err != nil {
		d.cfg = prev
		d.updateHealthLocked(nil)
		d.applyErr = prevErr // the batch was atomic: the kernel is as it was
		return fmt.Errorf("applying: %w", err)
	}
	if err := config.WriteFile(d.opts.ConfigPath, data, 0o600); err != nil {
		d.cfg = prev
		d.updateHealthLocked(nil)
		rerr := d.reconcileLocked(ctx, "rollback")
		return errors.Join(fmt.Errorf("persisting the change (rolled back): %w", err), rerr)
	}
	d.fileSum, d.configErr, d.badSum = sha256.Sum256(data), nil, [32]byte{}
	// Reparse what was written, so that problems point at its lines.
	if c, err := config.ParseAndValidate(d.opts.ConfigPath, data); err == nil {
		d.cfg = c
	}
	d.log.Info("change persisted", "reason", reason, "file", d.opts.ConfigPath)
	return nil
}
