package health

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Key names a backend of a farm.
type Key struct{ Farm, Backend string }

func (k Key) String() string { return k.Farm + "/" + k.Backend }

// Target is a backend to check.
type Target struct {
	Key  Key
	Addr netip.AddrPort
	// Spec is the check; Type None targets are not checked and always
	// healthy.
	Spec Spec
	// StartUnhealthy makes a new target start unhealthy, so that it needs
	// Rise passes before it takes traffic. Ignored for a target already
	// being checked at the same address.
	StartUnhealthy bool
}

// Status is the health of one target.
type Status struct {
	Type    Type `json:"type"`
	Healthy bool `json:"healthy"`
	// Since is when the target last changed health (or started).
	Since time.Time `json:"since"`
	// LastCheck is when the last check ended; zero before the first one.
	LastCheck time.Time `json:"last_check,omitzero"`
	// LastError is the last failure's message, kept until a check passes.
	LastError string `json:"last_error,omitempty"`
	// Checks and Failures count every check and every failed one.
	Checks   uint64 `json:"checks"`
	Failures uint64 `json:"failures"`
	// Streak is the number of consecutive results that disagree with
	// Healthy: failures while healthy, passes while unhealthy.
	Streak int `json:"streak"`
}

// Transition reports a target changing health.
type Transition struct {
	Key     Key
	Healthy bool
	// Err is the failure that made the target unhealthy.
	Err    error
	Status Status
}

// Options configure a Monitor.
type Options struct {
	// Dial creates the checks' connections; default net.Dialer.
	Dial DialFunc
	// OnTransition is called, from a checker's goroutine, after every
	// change of health. It must not block for long.
	OnTransition func(Transition)
	// Logger receives one line per transition; default discard.
	Logger *slog.Logger
}

// Monitor checks a changing set of targets. It is safe for concurrent use.
type Monitor struct {
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	checkers map[Key]*checker
	farms    map[string]map[string]struct{} // the backends checked, by farm
}

// NewMonitor returns a Monitor checking nothing yet.
func NewMonitor(opts Options) *Monitor {
	if opts.Dial == nil {
		var d net.Dialer
		opts.Dial = d.DialContext
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OnTransition == nil {
		opts.OnTransition = func(Transition) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Monitor{opts: opts, ctx: ctx, cancel: cancel, checkers: map[Key]*checker{}, farms: map[string]map[string]struct{}{}}
}

// Update makes the monitor check exactly targets: new ones start, removed
// ones stop, and changed ones restart keeping their health if their
// address did not change. Targets of type None are not checked.
func (m *Monitor) Update(targets []Target) {
	byFarm := map[string][]Target{}
	for _, t := range targets {
		byFarm[t.Key.Farm] = append(byFarm[t.Key.Farm], t)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for farm := range m.farms {
		if _, ok := byFarm[farm]; !ok {
			m.updateFarmLocked(farm, nil)
		}
	}
	for farm, ts := range byFarm {
		m.updateFarmLocked(farm, ts)
	}
}

// UpdateFarm is Update for the backends of one farm: targets are all of
// farm's, and the other farms' checks are left as they are. It costs what
// the farm holds.
func (m *Monitor) UpdateFarm(farm string, targets []Target) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.updateFarmLocked(farm, targets)
}

func (m *Monitor) updateFarmLocked(farm string, targets []Target) {
	if m.ctx.Err() != nil {
		return
	}
	want := map[Key]Target{}
	for _, t := range targets {
		if t.Spec.Type != None && t.Key.Farm == farm {
			t.Spec = t.Spec.WithDefaults()
			want[t.Key] = t
		}
	}
	stopped := map[Key]*checker{}
	for backend := range m.farms[farm] {
		k := Key{Farm: farm, Backend: backend}
		c := m.checkers[k]
		if t, ok := want[k]; !ok || t.Addr != c.target.Addr || t.Spec != c.target.Spec {
			c.stop()
			delete(m.checkers, k)
			delete(m.farms[farm], backend)
			stopped[k] = c
		}
	}
	for k, t := range want {
		if _, ok := m.checkers[k]; ok {
			continue
		}
		healthy := !t.StartUnhealthy
		// keep the health of a target whose check changed but not its address
		if old, ok := stopped[k]; ok && old.target.Addr == t.Addr {
			healthy = old.status().Healthy
		}
		c := m.newChecker(t, healthy)
		m.checkers[k] = c
		if m.farms[farm] == nil {
			m.farms[farm] = map[string]struct{}{}
		}
		m.farms[farm][k.Backend] = struct{}{}
		m.wg.Go(c.run)
	}
	if len(m.farms[farm]) == 0 {
		delete(m.farms, farm)
	}
}

// Status returns the health of the target k; false if it is not checked.
func (m *Monitor) Status(k Key) (Status, bool) {
	m.mu.Lock()
	c, ok := m.checkers[k]
	m.mu.Unlock()
	if !ok {
		return Status{}, false
	}
	return c.status(), true
}

// Healthy reports whether k may take new connections: true unless it is
// checked and failing.
func (m *Monitor) Healthy(k Key) bool {
	st, ok := m.Status(k)
	return !ok || st.Healthy
}

// Close stops every check and waits for the checkers to return.
func (m *Monitor) Close() {
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
}

type checker struct {
	m      *Monitor
	target Target
	ctx    context.Context
	cancel context.CancelFunc

	mu sync.Mutex
	st Status
}

func (m *Monitor) newChecker(t Target, healthy bool) *checker {
	ctx, cancel := context.WithCancel(m.ctx)
	return &checker{m: m, target: t, ctx: ctx, cancel: cancel,
		st: Status{Type: t.Spec.Type, Healthy: healthy, Since: time.Now()}}
}

func (c *checker) stop() { c.cancel() }

func (c *checker) status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *checker) run() {
	t := time.NewTicker(c.target.Spec.Interval)
	defer t.Stop()
	for {
		err := Check(c.ctx, c.m.opts.Dial, c.target.Spec, c.target.Addr)
		if c.ctx.Err() != nil {
			return // stopped during the check: its result means nothing
		}
		c.record(err)
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// record counts one result and reports a transition.
func (c *checker) record(err error) {
	spec := c.target.Spec
	c.mu.Lock()
	st := &c.st
	st.Checks++
	st.LastCheck = time.Now()
	if err != nil {
		st.Failures++
		st.LastError = err.Error()
	}
	pass := err == nil
	if pass == st.Healthy {
		st.Streak = 0
		if pass {
			st.LastError = ""
		}
		c.mu.Unlock()
		return
	}
	st.Streak++
	threshold := spec.Fall
	if pass {
		threshold = spec.Rise
	}
	if st.Streak < threshold {
		c.mu.Unlock()
		return
	}
	st.Healthy, st.Streak, st.Since = pass, 0, st.LastCheck
	if pass {
		st.LastError = ""
	}
	snapshot := *st
	c.mu.Unlock()

	k := c.target.Key
	if pass {
		c.m.opts.Logger.Info("backend healthy", "farm", k.Farm, "backend", k.Backend,
			"check", spec.Type, "address", c.target.Addr, "passes", spec.Rise)
	} else {
		c.m.opts.Logger.Warn("backend unhealthy", "farm", k.Farm, "backend", k.Backend,
			"check", spec.Type, "address", c.target.Addr, "failures", spec.Fall, "err", err)
	}
	c.m.opts.OnTransition(Transition{Key: k, Healthy: pass, Err: err, Status: snapshot})
}
