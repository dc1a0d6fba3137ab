package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

func TestCollect(t *testing.T) {
	m := New()
	m.SetStatus(func(context.Context) (daemon.Status, error) {
		return daemon.Status{Farms: []daemon.FarmStatus{{
			FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "web", Address: netip.MustParseAddr("198.51.100.250")}, Connections: 30, Packets: 300, Bytes: 3000},
			Backends: []daemon.BackendStatus{
				{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app0", Weight: 1, State: lb.Up}, Connections: 10, Packets: 100, Bytes: 1000},
					Effective: lb.Drain, Installed: true, Health: &health.Status{Type: health.TCP, Healthy: false}},
				{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app1", Weight: 2, State: lb.Up}, Connections: 20, Packets: 200, Bytes: 2000},
					Effective: lb.Up, Installed: true},
			},
		}}, Drifted: true, Repairs: 3}, nil
	})
	reg := prometheus.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatalf("failed to register: %v", err)
	}
	m.ObserveApply(lb.Result{Changed: true, Duration: 3 * time.Millisecond}, nil)
	m.ObserveApply(lb.Result{}, errors.New("boom"))
	m.ObserveReload(nil)
	m.ObserveReload(errors.New("bad file"))

	want := `
# HELP l4nft_backend_connections_total New connections sent to the backend.
# TYPE l4nft_backend_connections_total counter
l4nft_backend_connections_total{backend="app0",farm="web"} 10
l4nft_backend_connections_total{backend="app1",farm="web"} 20
# HELP l4nft_backend_healthy 1 if the backend passes its health checks or has none.
# TYPE l4nft_backend_healthy gauge
l4nft_backend_healthy{backend="app0",farm="web"} 0
l4nft_backend_healthy{backend="app1",farm="web"} 1
# HELP l4nft_backend_effective_state Installed state of the backend, drain when unhealthy (1 for the current state).
# TYPE l4nft_backend_effective_state gauge
l4nft_backend_effective_state{backend="app0",farm="web",state="down"} 0
l4nft_backend_effective_state{backend="app0",farm="web",state="drain"} 1
l4nft_backend_effective_state{backend="app0",farm="web",state="up"} 0
l4nft_backend_effective_state{backend="app1",farm="web",state="down"} 0
l4nft_backend_effective_state{backend="app1",farm="web",state="drain"} 0
l4nft_backend_effective_state{backend="app1",farm="web",state="up"} 1
# HELP l4nft_farm_backends_available Backends of the farm taking new connections.
# TYPE l4nft_farm_backends_available gauge
l4nft_farm_backends_available{farm="web"} 1
# HELP l4nft_farm_bytes_total Bytes of the farm's connections through the balancer.
# TYPE l4nft_farm_bytes_total counter
l4nft_farm_bytes_total{farm="web"} 3000
# HELP l4nft_apply_errors_total Applies that failed (the kernel was left unchanged).
# TYPE l4nft_apply_errors_total counter
l4nft_apply_errors_total 1
# HELP l4nft_config_reloads_total Reloads of the configuration file, by result.
# TYPE l4nft_config_reloads_total counter
l4nft_config_reloads_total{result="failure"} 1
l4nft_config_reloads_total{result="success"} 1
# HELP l4nft_config_last_reload_successful 1 if the last reload of the configuration file succeeded.
# TYPE l4nft_config_last_reload_successful gauge
l4nft_config_last_reload_successful 0
# HELP l4nft_kernel_drifted 1 while the kernel differs from the configuration and the repair has not succeeded.
# TYPE l4nft_kernel_drifted gauge
l4nft_kernel_drifted 1
# HELP l4nft_drift_repairs_total Differences between the kernel and the configuration found and repaired.
# TYPE l4nft_drift_repairs_total counter
l4nft_drift_repairs_total 3
`
	names := []string{"l4nft_backend_connections_total", "l4nft_backend_healthy", "l4nft_backend_effective_state",
		"l4nft_farm_backends_available", "l4nft_farm_bytes_total", "l4nft_apply_errors_total",
		"l4nft_config_reloads_total", "l4nft_config_last_reload_successful", "l4nft_kernel_drifted", "l4nft_drift_repairs_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.applyDuration); n != 1 {
		t.Errorf("apply duration histogram has %d series, want 1", n)
	}
}

func TestStatesByNameAreSorted(t *testing.T) {
	for i := 1; i < len(statesByName); i++ {
		if statesByName[i-1].String() >= statesByName[i].String() {
			t.Errorf("statesByName %v is not in the order of the names", statesByName)
		}
	}
}

// Farms with persistence, and only they, have a persistence entries
// gauge, 0 included.
func TestPersistenceEntries(t *testing.T) {
	m := New()
	sticky := &lb.Persistence{By: lb.PersistSrcIP, TTL: lb.Duration(time.Minute)}
	m.SetStatus(func(context.Context) (daemon.Status, error) {
		return daemon.Status{Farms: []daemon.FarmStatus{
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "web", Persistence: sticky}, PersistenceEntries: 42}},
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "plain", Scheduler: lb.Consistent}}},
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "api", Persistence: sticky}}},
		}}, nil
	})
	reg := prometheus.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatalf("failed to register: %v", err)
	}
	want := `
# HELP l4nft_farm_persistence_entries Clients the farm's persistence remembers (live entries).
# TYPE l4nft_farm_persistence_entries gauge
l4nft_farm_persistence_entries{farm="api"} 0
l4nft_farm_persistence_entries{farm="web"} 42
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "l4nft_farm_persistence_entries"); err != nil {
		t.Error(err)
	}
}

// A farm has a rejection counter for each reason its options count, 0
// included, named as the library's JSON names them; a farm without
// lists, limits or tcp_strict has none.
func TestRejected(t *testing.T) {
	m := New()
	all := lb.Rejections{Denied: 1, NotAllowed: 2, Rate: 3, ClientRate: 4, ClientConnections: 5, Invalid: 6}
	lists := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	m.SetStatus(func(context.Context) (daemon.Status, error) {
		return daemon.Status{Farms: []daemon.FarmStatus{
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "web", Allow: lists, Deny: lists, TCPStrict: true,
				Limits: &lb.Limits{NewPerSecond: 10, NewPerClientPerSecond: 1, EstablishedPerClient: 5}}, Rejected: all}},
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "plain", Limits: &lb.Limits{}}}},
			{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "api", Deny: lists, Limits: &lb.Limits{EstablishedPerClient: 5, Action: lb.Drop}},
				Rejected: lb.Rejections{Denied: 7}}},
		}}, nil
	})
	reg := prometheus.NewPedanticRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatalf("failed to register: %v", err)
	}
	want := `
# HELP l4nft_farm_rejected_total New connections to the farm refused or dropped by its deny and allow lists, limits and tcp_strict, by reason.
# TYPE l4nft_farm_rejected_total counter
l4nft_farm_rejected_total{farm="api",reason="client_connections"} 0
l4nft_farm_rejected_total{farm="api",reason="denied"} 7
l4nft_farm_rejected_total{farm="web",reason="client_connections"} 5
l4nft_farm_rejected_total{farm="web",reason="client_rate"} 4
l4nft_farm_rejected_total{farm="web",reason="denied"} 1
l4nft_farm_rejected_total{farm="web",reason="invalid"} 6
l4nft_farm_rejected_total{farm="web",reason="not_allowed"} 2
l4nft_farm_rejected_total{farm="web",reason="rate"} 3
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "l4nft_farm_rejected_total"); err != nil {
		t.Error(err)
	}
	// Every count of the library's has its reason, named alike, in the
	// order of the names: farm by farm, the registry's order.
	b, err := json.Marshal(all)
	if err != nil {
		t.Fatal(err)
	}
	var counts map[string]uint64
	if err := json.Unmarshal(b, &counts); err != nil {
		t.Fatal(err)
	}
	every := rejections(&daemon.FarmStatus{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Allow: lists, Deny: lists, TCPStrict: true,
		Limits: &lb.Limits{NewPerSecond: 10, NewPerClientPerSecond: 1, EstablishedPerClient: 5}}, Rejected: all},
		Backends: []daemon.BackendStatus{{BackendStatus: lb.BackendStatus{Backend: lb.Backend{MaxConnections: 5}}}}})
	for _, r := range every {
		if counts[r.reason] != r.count {
			t.Errorf("reason %s counts %d, the library's JSON %d", r.reason, r.count, counts[r.reason])
		}
		delete(counts, r.reason)
	}
	if len(counts) != 0 {
		t.Errorf("reasons of the library without a series: %v", counts)
	}
	if !slices.IsSortedFunc(every, func(a, b rejection) int { return strings.Compare(a.reason, b.reason) }) {
		t.Errorf("reasons %v are not in the order of their names", every)
	}
}
