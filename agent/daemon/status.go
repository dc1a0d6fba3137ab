package daemon

import (
	"time"

	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

// Status is what the agent runs and how it is doing.
type Status struct {
	// Table and NetNS say where the agent acts ("" is its own namespace).
	Table string `json:"table"`
	NetNS string `json:"netns,omitempty"`
	// Config is the configuration file's path.
	Config    string    `json:"config"`
	StartedAt time.Time `json:"started_at"`
	// ConfigError is the last rejected version of the file, until a valid
	// one replaces it; nil when the file on disk is the one in force.
	ConfigError *ConfigError `json:"config_error,omitempty"`
	// ApplyError is the last failed apply's error, until one succeeds.
	ApplyError string `json:"apply_error,omitempty"`
	// LastApply describes the last apply that succeeded, LastChange the
	// last one that changed the kernel.
	LastApply  ApplyInfo `json:"last_apply"`
	LastChange ApplyInfo `json:"last_change,omitzero"`
	// Changes and Rebuilds count the applies that changed the kernel and
	// those that (re)created the whole table, since the agent started.
	Changes  int `json:"changes"`
	Rebuilds int `json:"rebuilds"`
	// Reloads counts the configuration reloads, Rejected the rejected ones.
	Reloads  int `json:"reloads"`
	Rejected int `json:"rejected"`
	// Drifted is true while the kernel was found to differ from the
	// desired state (changed behind the agent's back) and the repair
	// failed; Repairs counts the differences found and repaired.
	Drifted bool `json:"drifted,omitempty"`
	Repairs int  `json:"repairs"`
	// Farms are the configured farms with their live state.
	Farms []FarmStatus `json:"farms"`
}

// ConfigError is a rejected configuration.
type ConfigError struct {
	Time     time.Time    `json:"time"`
	Message  string       `json:"message"`
	Problems []lb.Problem `json:"problems,omitempty"`
}

// ApplyInfo describes one apply.
type ApplyInfo struct {
	Time time.Time `json:"time"`
	// Reason is what caused it: "start", "reload", "api", "health"...
	Reason   string        `json:"reason"`
	Changed  bool          `json:"changed"`
	Rebuilt  bool          `json:"rebuilt"`
	Messages int           `json:"messages"`
	Elements int           `json:"elements"`
	Duration time.Duration `json:"duration_ns"`
}

// FarmStatus is a farm as configured, with its backends' live state and
// counters: the library's lb.FarmStatus, whose Backends this one's replace.
type FarmStatus struct {
	lb.FarmStatus
	Backends []BackendStatus `json:"backends"`
}

// BackendStatus is a backend as configured, with its mark and counters
// (the library's lb.BackendStatus), the state installed and its health.
type BackendStatus struct {
	lb.BackendStatus
	// Effective is the state installed, which is drain when health failed
	// (State is the operator's, the file's).
	Effective lb.BackendState `json:"effective_state"`
	// Installed is false if the backend is not in the kernel (an apply
	// failed); Effective and the counters are then meaningless.
	Installed bool `json:"installed"`
	// Health is nil when the backend is not checked.
	Health *health.Status `json:"health,omitempty"`
}

// Healthy reports whether the backend passes its checks (or has none).
func (b BackendStatus) Healthy() bool { return b.Health == nil || b.Health.Healthy }
