package config

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

// DefaultSocket is the API's unix socket when neither the command line nor
// the file names one.
const DefaultSocket = "/run/l4nft.sock"

// Config is the content of a configuration file.
type Config struct {
	// Table is the nftables table the agent owns; empty means lb.DefaultTable.
	Table string `json:"table,omitempty"`
	// Options are the balancer's options.
	Options Options `json:"options,omitzero"`
	// API configures the agent's HTTP API.
	API API `json:"api,omitzero"`
	// Limits bound what the configuration and the API may hold.
	Limits Limits `json:"limits,omitzero"`
	// Farms are the virtual services.
	Farms []Farm `json:"farms"`

	src string    // file name for problems
	pos positions // lines of top-level fields
}

// Options are the lb.Options a file may set.
type Options struct {
	// MarkMask is lb.Options.MarkMask; zero means lb.DefaultMarkMask.
	MarkMask Mask `json:"mark_mask,omitempty"`
	// LocalConnections is lb.Options.LocalConnections.
	LocalConnections bool `json:"local_connections,omitempty"`
	// FlushConntrack is lb.Options.FlushConntrack.
	FlushConntrack bool `json:"flush_conntrack,omitempty"`
}

// Default limits.
const (
	DefaultMaxFarms    = 100000
	DefaultMaxBackends = 10000
)

// Limits bound the number of objects a configuration may hold, so that a
// hostile or mistaken input costs bounded memory and time. Zero fields
// take the defaults.
type Limits struct {
	// MaxFarms is the most farms; default DefaultMaxFarms.
	MaxFarms int `json:"max_farms,omitempty"`
	// MaxBackends is the most backends of one farm; default
	// DefaultMaxBackends.
	MaxBackends int `json:"max_backends,omitempty"`
}

// WithDefaults returns l with zero fields set to their default.
func (l Limits) WithDefaults() Limits {
	if l.MaxFarms <= 0 {
		l.MaxFarms = DefaultMaxFarms
	}
	if l.MaxBackends <= 0 {
		l.MaxBackends = DefaultMaxBackends
	}
	return l
}

// Mask is a conntrack mark mask, written in hexadecimal.
type Mask uint32

// MarshalText implements encoding.TextMarshaler.
func (m Mask) MarshalText() ([]byte, error) { return fmt.Appendf(nil, "%#08x", uint32(m)), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mask) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 0, 32)
	if err != nil {
		return fmt.Errorf("mark mask %q is not a 32-bit number", b)
	}
	*m = Mask(v)
	return nil
}

// API configures the agent's HTTP API.
type API struct {
	// Socket is the unix socket path; empty means DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// Listen is an optional TCP address (host:port) to serve on too.
	Listen string `json:"listen,omitempty"`
	// TokenFile holds the bearer token the TCP listener requires.
	TokenFile string `json:"token_file,omitempty"`
	// TLSCert and TLSKey are PEM files; required unless Listen is a
	// loopback address.
	TLSCert string `json:"tls_cert,omitempty"`
	TLSKey  string `json:"tls_key,omitempty"`
}

// Farm is an lb.Farm with health checks: every field of lb.Farm is
// carried as it is (see LB), but Backends, which are this package's
// Backend. The embedded lb.Farm's own Backends field is not used.
type Farm struct {
	lb.Farm
	// Health is the check of every backend; nil means none.
	Health   *Health   `json:"health,omitempty"`
	Backends []Backend `json:"backends"`

	src string    // file name (or "request body") for problems
	pos positions // lines relative to the farm: "", "name", "backends[1].weight"...
}

// Backend is an lb.Backend with an optional health override.
type Backend struct {
	lb.Backend
	// Health overrides the fields of the farm's Health it sets.
	Health *Health `json:"health,omitempty"`
}

// Health is a health check as written in the file; zero fields take the
// farm's value, then the defaults of package health.
type Health struct {
	// Type is "tcp", "http", "none", or empty to inherit.
	Type     string   `json:"type,omitempty"`
	Interval Duration `json:"interval,omitzero"`
	Timeout  Duration `json:"timeout,omitzero"`
	Rise     int      `json:"rise,omitempty"`
	Fall     int      `json:"fall,omitempty"`
	// Port is the port checked; 0 means the backend's port, or the
	// farm's first port when the backend has none.
	Port   uint16 `json:"port,omitempty"`
	Path   string `json:"path,omitempty"`
	Host   string `json:"host,omitempty"`
	Expect string `json:"expect,omitempty"`
}

// Duration is a time.Duration written as "2s".
type Duration time.Duration

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration (such as 2s or 500ms)", b)
	}
	*d = Duration(v)
	return nil
}

// SetSource sets the name problems are reported against.
func (c *Config) SetSource(name string) { c.src = name }

// TableName returns the table, default filled in.
func (c *Config) TableName() string {
	if c.Table == "" {
		return lb.DefaultTable
	}
	return c.Table
}

// SocketPath returns the API socket, default filled in.
func (c *Config) SocketPath() string {
	if c.API.Socket == "" {
		return DefaultSocket
	}
	return c.API.Socket
}

// LBOptions returns the lb.Options the file asks for. NetNS and Logger
// are the caller's.
func (c *Config) LBOptions() lb.Options {
	return lb.Options{
		Table:            c.TableName(),
		MarkMask:         uint32(c.Options.MarkMask),
		LocalConnections: c.Options.LocalConnections,
		FlushConntrack:   c.Options.FlushConntrack,
	}
}

// State returns the farms as the lb.State they describe, backends in the
// states written (health is the daemon's business).
func (c *Config) State() lb.State {
	s := lb.State{Farms: make([]lb.Farm, 0, len(c.Farms))}
	for _, f := range c.Farms {
		s.Farms = append(s.Farms, f.LB())
	}
	return s
}

// LB returns the farm as an lb.Farm: its own fields, and its backends'.
func (f Farm) LB() lb.Farm {
	out := f.Farm.Clone()
	out.Backends = make([]lb.Backend, len(f.Backends))
	for i := range f.Backends {
		out.Backends[i] = f.Backends[i].Backend
	}
	return out
}

// Farm returns the farm named name.
func (c *Config) Farm(name string) (Farm, bool) {
	for _, f := range c.Farms {
		if f.Name == name {
			return f, true
		}
	}
	return Farm{}, false
}

// Clone returns a deep copy of c.
func (c *Config) Clone() *Config {
	out := *c
	out.Farms = make([]Farm, len(c.Farms))
	for i, f := range c.Farms {
		out.Farms[i] = f.Clone()
	}
	return &out
}

// Clone returns a deep copy of f.
func (f Farm) Clone() Farm {
	f.Farm = f.Farm.Clone()
	f.Backends = append([]Backend(nil), f.Backends...)
	if f.Health != nil {
		h := *f.Health
		f.Health = &h
	}
	for i, b := range f.Backends {
		if b.Health != nil {
			h := *b.Health
			f.Backends[i].Health = &h
		}
	}
	return f
}

// HealthSpec returns the effective check of backend b of farm f: defaults,
// overridden by the farm's health, overridden by the backend's, and the
// address and port to check.
func (f Farm) HealthSpec(b Backend) (health.Spec, netip.AddrPort, error) {
	var spec health.Spec
	var port uint16
	for _, h := range []*Health{f.Health, b.Health} {
		if h == nil {
			continue
		}
		if h.Type != "" {
			t, err := health.ParseType(h.Type)
			if err != nil {
				return health.Spec{}, netip.AddrPort{}, err
			}
			spec.Type = t
		}
		if h.Interval != 0 {
			spec.Interval = time.Duration(h.Interval)
		}
		if h.Timeout != 0 {
			spec.Timeout = time.Duration(h.Timeout)
		}
		if h.Rise != 0 {
			spec.Rise = h.Rise
		}
		if h.Fall != 0 {
			spec.Fall = h.Fall
		}
		if h.Port != 0 {
			port = h.Port
		}
		if h.Path != "" {
			spec.Path = h.Path
		}
		if h.Host != "" {
			spec.Host = h.Host
		}
		if h.Expect != "" {
			r, err := health.ParseStatusRange(h.Expect)
			if err != nil {
				return health.Spec{}, netip.AddrPort{}, err
			}
			spec.Expect = r
		}
	}
	if port == 0 {
		port = b.Port
	}
	if port == 0 && len(f.Ports) > 0 {
		port = f.Ports[0].First
	}
	return spec.WithDefaults(), netip.AddrPortFrom(b.Address.Unmap(), port), nil
}

// HealthTargets returns the checks of every backend of every farm.
// Backends whose check is invalid are skipped (Validate reports them).
func (c *Config) HealthTargets() []health.Target {
	var out []health.Target
	for i := range c.Farms {
		out = append(out, c.Farms[i].HealthTargets()...)
	}
	return out
}

// HealthTargets returns the checks of the farm's backends, skipping
// those whose check is invalid.
func (f *Farm) HealthTargets() []health.Target {
	var out []health.Target
	for _, b := range f.Backends {
		spec, addr, err := f.HealthSpec(b)
		if err != nil || spec.Type == health.None {
			continue
		}
		out = append(out, health.Target{Key: health.Key{Farm: f.Name, Backend: b.Name}, Addr: addr, Spec: spec})
	}
	return out
}

// Equal reports whether f and g configure the same farm (where in which
// source they were read does not count).
func (f *Farm) Equal(g *Farm) bool {
	if !sameHealth(f.Health, g.Health) || len(f.Backends) != len(g.Backends) || !slices.Equal(f.Ports, g.Ports) ||
		// nil and empty alike:
		!slices.Equal(f.HashFields, g.HashFields) || !slices.Equal(f.Allow, g.Allow) || !slices.Equal(f.Deny, g.Deny) ||
		!slices.Equal(f.Helpers, g.Helpers) {
		return false
	}
	for i := range f.Backends {
		if f.Backends[i].Backend != g.Backends[i].Backend || !sameHealth(f.Backends[i].Health, g.Backends[i].Health) {
			return false
		}
	}
	a, b := f.Farm, g.Farm
	a.Ports, b.Ports, a.Backends, b.Backends = nil, nil, nil, nil
	a.HashFields, b.HashFields = nil, nil
	a.Allow, b.Allow, a.Deny, b.Deny, a.Helpers, b.Helpers = nil, nil, nil, nil, nil, nil
	return reflect.DeepEqual(a, b) // whatever fields lb.Farm gains
}

func sameHealth(a, b *Health) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// SourceFile returns the file the farm was read from ("request body" for
// an API request).
func (f *Farm) SourceFile() string { return f.src }

// SetSource sets the name problems about f are reported against.
func (f *Farm) SetSource(name string) { f.src = name }
