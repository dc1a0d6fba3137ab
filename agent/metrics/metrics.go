// Package metrics exposes the l4nft agent's state to Prometheus.
//
// Per-backend and per-farm values are read from the daemon's Status (the
// nftables counters, health and configuration) at scrape time by a custom
// collector, so nothing polls the kernel between scrapes and a removed
// backend simply stops being reported. Apply and reload events are
// recorded as they happen through the daemon.Observer methods.
//
// # Metrics
//
//	l4nft_backend_connections_total{farm,backend}   new connections sent to the backend
//	l4nft_backend_packets_total{farm,backend}       packets of its connections, both directions
//	l4nft_backend_bytes_total{farm,backend}         bytes of its connections, both directions
//	l4nft_backend_healthy{farm,backend}             1 if its checks pass (or it has none), else 0
//	l4nft_backend_weight{farm,backend}              configured weight
//	l4nft_backend_state{farm,backend,state}         1 for the configured state (up, drain, down)
//	l4nft_backend_effective_state{farm,backend,state} 1 for the installed state (drain when unhealthy)
//	l4nft_farm_connections_total{farm}              sum over the farm's backends
//	l4nft_farm_packets_total{farm}
//	l4nft_farm_bytes_total{farm}
//	l4nft_farm_backends_available{farm}             backends taking new connections
//	l4nft_farm_persistence_entries{farm}            clients persistence remembers (farms with persistence only)
//	l4nft_farm_rejected_total{farm,reason}          new connections refused, by reason (the reasons the farm's options count)
//	l4nft_apply_duration_seconds                    histogram of kernel transactions
//	l4nft_apply_errors_total                        applies the kernel refused
//	l4nft_last_successful_apply_timestamp_seconds   when the kernel last matched the desired state
//	l4nft_config_reloads_total{result}              reloads of the file: success or failure
//	l4nft_config_last_reload_successful             0 while the file on disk is rejected
//	l4nft_scrape_errors_total                       scrapes that could not read the kernel
//
// Counters start at zero when a backend is created and live as long as it
// does; Prometheus' rate() handles the reset when a backend is recreated.
package metrics

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

// StatusFunc returns the agent's status; the daemon's Status method.
type StatusFunc func(context.Context) (daemon.Status, error)

// Metrics records the agent's events and collects its per-backend metrics.
// It implements daemon.Observer and prometheus.Collector.
type Metrics struct {
	status StatusFunc

	applyDuration prometheus.Histogram
	applyErrors   prometheus.Counter
	lastApply     prometheus.Gauge
	reloads       *prometheus.CounterVec
	reloadOK      prometheus.Gauge
	scrapeErrors  prometheus.Counter

	backendConns, backendPackets, backendBytes *prometheus.Desc
	backendHealthy, backendWeight              *prometheus.Desc
	backendState, backendEffective             *prometheus.Desc
	farmConns, farmPackets, farmBytes          *prometheus.Desc
	farmAvailable, farmPersistence             *prometheus.Desc
	farmRejected                               *prometheus.Desc
	drifted, repairs                           *prometheus.Desc
}

// New returns Metrics; call SetStatus before registering it.
func New() *Metrics {
	be := []string{"farm", "backend"}
	bes := []string{"farm", "backend", "state"}
	farm := []string{"farm"}
	m := &Metrics{
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "l4nft_apply_duration_seconds", Help: "Duration of the nftables transactions that changed the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
		}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4nft_apply_errors_total", Help: "Applies that failed (the kernel was left unchanged)."}),
		lastApply: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4nft_last_successful_apply_timestamp_seconds", Help: "Unix time of the last apply that succeeded."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "l4nft_config_reloads_total", Help: "Reloads of the configuration file, by result."}, []string{"result"}),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "l4nft_config_last_reload_successful", Help: "1 if the last reload of the configuration file succeeded."}),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "l4nft_scrape_errors_total", Help: "Scrapes that could not read the status from the kernel."}),

		backendConns:     prometheus.NewDesc("l4nft_backend_connections_total", "New connections sent to the backend.", be, nil),
		backendPackets:   prometheus.NewDesc("l4nft_backend_packets_total", "Packets of the backend's connections through the balancer, both directions.", be, nil),
		backendBytes:     prometheus.NewDesc("l4nft_backend_bytes_total", "Bytes of the backend's connections through the balancer, both directions.", be, nil),
		backendHealthy:   prometheus.NewDesc("l4nft_backend_healthy", "1 if the backend passes its health checks or has none.", be, nil),
		backendWeight:    prometheus.NewDesc("l4nft_backend_weight", "Configured weight of the backend.", be, nil),
		backendState:     prometheus.NewDesc("l4nft_backend_state", "Configured state of the backend (1 for the current state).", bes, nil),
		backendEffective: prometheus.NewDesc("l4nft_backend_effective_state", "Installed state of the backend, drain when unhealthy (1 for the current state).", bes, nil),
		farmConns:        prometheus.NewDesc("l4nft_farm_connections_total", "New connections to the farm.", farm, nil),
		farmPackets:      prometheus.NewDesc("l4nft_farm_packets_total", "Packets of the farm's connections through the balancer.", farm, nil),
		farmBytes:        prometheus.NewDesc("l4nft_farm_bytes_total", "Bytes of the farm's connections through the balancer.", farm, nil),
		farmAvailable:    prometheus.NewDesc("l4nft_farm_backends_available", "Backends of the farm taking new connections.", farm, nil),
		farmPersistence:  prometheus.NewDesc("l4nft_farm_persistence_entries", "Clients the farm's persistence remembers (live entries).", farm, nil),
		farmRejected: prometheus.NewDesc("l4nft_farm_rejected_total", "New connections to the farm refused or dropped by its deny and allow lists, limits and tcp_strict, by reason.",
			[]string{"farm", "reason"}, nil),
		drifted: prometheus.NewDesc("l4nft_kernel_drifted", "1 while the kernel differs from the configuration and the repair has not succeeded.", nil, nil),
		repairs: prometheus.NewDesc("l4nft_drift_repairs_total", "Differences between the kernel and the configuration found and repaired.", nil, nil),
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	m.reloadOK.Set(1)
	return m
}

// SetStatus sets where the collector reads per-backend values. It must be
// called before the first scrape.
func (m *Metrics) SetStatus(f StatusFunc) { m.status = f }

// Register registers m with reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m, m.applyDuration, m.applyErrors, m.lastApply, m.reloads, m.reloadOK, m.scrapeErrors} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// ObserveApply implements daemon.Observer.
func (m *Metrics) ObserveApply(res lb.Result, err error) {
	if err != nil {
		m.applyErrors.Inc()
		return
	}
	if res.Changed {
		m.applyDuration.Observe(res.Duration.Seconds())
	}
	m.lastApply.SetToCurrentTime()
}

// ObserveReload implements daemon.Observer.
func (m *Metrics) ObserveReload(err error) {
	if err != nil {
		m.reloads.WithLabelValues("failure").Inc()
		m.reloadOK.Set(0)
		return
	}
	m.reloads.WithLabelValues("success").Inc()
	m.reloadOK.Set(1)
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.backendConns, m.backendPackets, m.backendBytes, m.backendHealthy,
		m.backendWeight, m.backendState, m.backendEffective, m.farmConns, m.farmPackets, m.farmBytes, m.farmAvailable,
		m.farmPersistence, m.farmRejected, m.drifted, m.repairs} {
		ch <- d
	}
}

// statesByName are the backend states in the order of their names
// ("down", "drain", "up"): the order the registry sorts their series in.
var statesByName = []lb.BackendState{lb.Down, lb.Drain, lb.Up}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	if m.status == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.status(ctx)
	if err != nil {
		m.scrapeErrors.Inc()
		return
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	ch <- prometheus.MustNewConstMetric(m.drifted, prometheus.GaugeValue, b2f(st.Drifted))
	ch <- prometheus.MustNewConstMetric(m.repairs, prometheus.CounterValue, float64(st.Repairs))
	// Emitted in the order the registry sorts them into (by label value,
	// labels by name: backend, farm, state), so that its sort finds them
	// sorted: at 10,000 farms its sort of 220,000 unsorted series was the
	// largest part of a scrape.
	type ref struct {
		farm    string
		backend *daemon.BackendStatus
	}
	var refs []ref
	for fi := range st.Farms {
		f := &st.Farms[fi]
		for bi := range f.Backends {
			refs = append(refs, ref{f.Name, &f.Backends[bi]})
		}
	}
	slices.SortFunc(refs, func(x, y ref) int {
		if c := strings.Compare(x.backend.Name, y.backend.Name); c != 0 {
			return c
		}
		return strings.Compare(x.farm, y.farm)
	})
	for _, r := range refs {
		b := r.backend
		l := []string{r.farm, b.Name}
		ch <- prometheus.MustNewConstMetric(m.backendConns, prometheus.CounterValue, float64(b.Connections), l...)
		ch <- prometheus.MustNewConstMetric(m.backendPackets, prometheus.CounterValue, float64(b.Packets), l...)
		ch <- prometheus.MustNewConstMetric(m.backendBytes, prometheus.CounterValue, float64(b.Bytes), l...)
		ch <- prometheus.MustNewConstMetric(m.backendHealthy, prometheus.GaugeValue, b2f(b.Healthy()), l...)
		ch <- prometheus.MustNewConstMetric(m.backendWeight, prometheus.GaugeValue, float64(b.Weight), l...)
		for _, s := range statesByName {
			ch <- prometheus.MustNewConstMetric(m.backendState, prometheus.GaugeValue, b2f(b.State == s), r.farm, b.Name, s.String())
			ch <- prometheus.MustNewConstMetric(m.backendEffective, prometheus.GaugeValue, b2f(b.Installed && b.Effective == s), r.farm, b.Name, s.String())
		}
	}
	farms := make([]*daemon.FarmStatus, len(st.Farms))
	for i := range st.Farms {
		farms[i] = &st.Farms[i]
	}
	slices.SortFunc(farms, func(x, y *daemon.FarmStatus) int { return strings.Compare(x.Name, y.Name) })
	for _, f := range farms {
		available := 0
		for _, b := range f.Backends {
			if b.Installed && b.Effective == lb.Up {
				available++
			}
		}
		ch <- prometheus.MustNewConstMetric(m.farmConns, prometheus.CounterValue, float64(f.Connections), f.Name)
		ch <- prometheus.MustNewConstMetric(m.farmPackets, prometheus.CounterValue, float64(f.Packets), f.Name)
		ch <- prometheus.MustNewConstMetric(m.farmBytes, prometheus.CounterValue, float64(f.Bytes), f.Name)
		ch <- prometheus.MustNewConstMetric(m.farmAvailable, prometheus.GaugeValue, float64(available), f.Name)
		if f.Persistence != nil {
			ch <- prometheus.MustNewConstMetric(m.farmPersistence, prometheus.GaugeValue, float64(f.PersistenceEntries), f.Name)
		}
		for _, r := range rejections(f) {
			ch <- prometheus.MustNewConstMetric(m.farmRejected, prometheus.CounterValue, float64(r.count), f.Name, r.reason)
		}
	}
}

type rejection struct {
	reason string
	count  uint64
}

// rejections returns a farm's rejection counts for the reasons its
// options count, in the order of the reasons' names (the registry's).
// Each such series is emitted from 0 on, not only once it is non-zero: a
// counter that appears at its first increment hides that increment from
// rate() and increase(), and an absent series cannot tell "nothing
// refused" from "not counted". A reason the farm's options do not count
// has no series (the library keeps no counter for it), so a farm without
// lists, limits or tcp_strict adds none.
func rejections(f *daemon.FarmStatus) []rejection {
	var out []rejection
	r, l := f.Rejected, f.Limits
	if l == nil {
		l = &lb.Limits{}
	}
	for _, c := range []struct {
		on     bool
		reason string
		count  uint64
	}{ // by reason name
		{slices.ContainsFunc(f.Backends, func(b daemon.BackendStatus) bool { return b.MaxConnections > 0 }), "backend_full", r.BackendFull},
		{l.EstablishedPerClient > 0, "client_connections", r.ClientConnections},
		{l.NewPerClientPerSecond > 0, "client_rate", r.ClientRate},
		{len(f.Deny) > 0, "denied", r.Denied},
		{f.TCPStrict, "invalid", r.Invalid},
		{len(f.Allow) > 0, "not_allowed", r.NotAllowed},
		{l.NewPerSecond > 0, "rate", r.Rate},
	} {
		// A count outlives its option (see lb.Rejections).
		if c.on || c.count > 0 {
			out = append(out, rejection{c.reason, c.count})
		}
	}
	return out
}
