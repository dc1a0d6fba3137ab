package lb

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// State is the desired configuration of a balancer: every farm it serves.
// Apply makes the kernel match it.
type State struct {
	Farms []Farm `json:"farms"`
}

// Farm is a virtual service: connections to Address on one of Ports with
// Protocol are spread over Backends.
type Farm struct {
	// Name identifies the farm: 1 to 32 letters, digits, '_' or '-',
	// starting with a letter or digit.
	Name string `json:"name"`
	// Address is the virtual address clients connect to, IPv4 or IPv6.
	Address netip.Addr `json:"address"`
	// Ports are the ports served; a range stays one range in the kernel.
	// A farm of protocol AllProtocols has none.
	Ports []PortRange `json:"ports,omitempty"`
	// Protocol is TCP, UDP, both, SCTP, or every protocol (AllProtocols,
	// which has no ports).
	Protocol Protocol `json:"protocol"`
	// Mode says how replies find their way back: NAT or DNAT.
	Mode Mode `json:"mode"`
	// Scheduler chooses a backend for each new connection.
	Scheduler Scheduler `json:"scheduler"`
	// HashFields are the fields the hash and consistent schedulers hash;
	// empty means src_ip.
	HashFields []HashField `json:"hash_fields,omitempty"`
	// Slots is the size of the consistent scheduler's lookup table,
	// rounded up to a prime; 0 means the smallest prime of at least 100
	// per backend. More slots split weights more finely and cost more
	// elements.
	Slots int `json:"slots,omitempty"`
	// Persistence sends a client's new connections to the backend it
	// reached last, while that backend takes connections and the entry
	// has not expired; nil means none.
	Persistence *Persistence `json:"persistence,omitempty"`
	// Limits bound new connections to the farm, in all and per client.
	Limits *Limits `json:"limits,omitempty"`
	// TCPStrict drops the packets to the farm that conntrack finds
	// invalid (out of window, or of no connection it knows), as nftlb's
	// tcp-strict does.
	TCPStrict bool `json:"tcp_strict,omitempty"`
	// Allow, if not empty, admits only clients whose source address is in
	// one of these prefixes; Deny refuses those in one of its prefixes,
	// and wins over Allow. Prefixes are of the farm's family.
	Allow []netip.Prefix `json:"allow,omitempty"`
	Deny  []netip.Prefix `json:"deny,omitempty"`
	// Helpers are the conntrack helpers the farm's connections use, so
	// that protocols which open further connections (ftp's data
	// connection) work through the balancer.
	Helpers []Helper `json:"helpers,omitempty"`
	// Source is the address NAT mode rewrites the client's to. The zero
	// Addr means masquerade: the balancer's address on the way out. It
	// must be zero in DNAT mode.
	Source netip.Addr `json:"source,omitzero"`
	// Backends are the real servers.
	Backends []Backend `json:"backends"`
}

// Backend is a real server of a farm.
type Backend struct {
	// Name identifies the backend within its farm; same rules as Farm.Name.
	Name string `json:"name"`
	// Address is the server's address, of the farm's family.
	Address netip.Addr `json:"address"`
	// Port is the server's port; 0 keeps the port the client connected to.
	// It must be 0 in a farm of protocol AllProtocols.
	Port uint16 `json:"port,omitempty"`
	// Weight is the backend's share of new connections relative to the
	// other available backends of its farm, 1 to MaxWeight.
	Weight int `json:"weight"`
	// State says whether the backend takes new connections.
	State BackendState `json:"state"`
	// Priority makes a backup server: new connections go only to the
	// available (Up) backends of the best priority that has any, 1 the
	// best, MaxPriority the worst; 0 means 1. When every backend of the
	// best priority is drained, down or removed, the next priority takes
	// over in the same change, and gives way again when one comes back.
	Priority int `json:"priority,omitempty"`
	// MaxConnections, if not 0, is how many connections the backend takes
	// at once. The new connection that finds it full loses its first
	// packet (the client sends it again) and flags it full for a few
	// seconds, during which choices that fall on it are made again, so
	// other backends take its new connections.
	MaxConnections int `json:"max_connections,omitempty"`
}

// MaxPriority is the worst backend priority.
const MaxPriority = 9

// priority returns the backend's priority, the default filled in.
func (b Backend) priority() int { return max(b.Priority, 1) }

// MaxWeight is the largest backend weight.
const MaxWeight = 10000

// PortRange is a range of ports, First to Last inclusive; a single port has
// First == Last.
type PortRange struct {
	First, Last uint16
}

// Port returns the range holding the single port p.
func Port(p uint16) PortRange { return PortRange{p, p} }

// String formats the range as "443" or "8000-8010".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// ParsePortRange parses "443" or "8000-8010".
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := parsePort(first)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := parsePort(last)
	if err != nil {
		return PortRange{}, err
	}
	if b < a {
		return PortRange{}, fmt.Errorf("port range %q ends before it starts", s)
	}
	return PortRange{a, b}, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number", s)
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is outside 1-65535", n)
	}
	return uint16(n), nil
}

// MarshalText implements encoding.TextMarshaler.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *PortRange) UnmarshalText(b []byte) error {
	v, err := ParsePortRange(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// enum is the common text form of the small enumerations below.
type enum[T ~uint8] struct {
	kind  string
	names []string // index = value
}

func (e enum[T]) name(v T) string {
	if int(v) < len(e.names) {
		return e.names[v]
	}
	return fmt.Sprintf("%s(%d)", e.kind, v)
}

func (e enum[T]) parse(s string) (T, error) {
	for i, n := range e.names {
		if n == s && n != "" {
			return T(i), nil
		}
	}
	return 0, fmt.Errorf("unknown %s %q (want %s)", e.kind, s, strings.Join(e.valid(), ", "))
}

func (e enum[T]) valid() []string {
	var out []string
	for _, n := range e.names {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

func (e enum[T]) ok(v T) bool { return int(v) < len(e.names) && e.names[v] != "" }

// Protocol is the transport protocol of a farm.
type Protocol uint8

// Protocols. The zero value is TCP.
const (
	TCP Protocol = iota
	UDP
	// TCPUDP serves both TCP and UDP on the farm's ports.
	TCPUDP
	// SCTP serves SCTP associations on the farm's ports: its destination
	// port sits where TCP's and UDP's do, and the kernel's conntrack and
	// NAT rewrite SCTP ports as theirs (CONFIG_NF_CT_PROTO_SCTP).
	SCTP
	// AllProtocols serves every IP protocol to the farm's address. The
	// farm has no ports and its backends no port: a connection keeps the
	// port it was made to. A farm of another protocol on the same address
	// takes precedence for the protocol and ports it serves: a new
	// connection is matched against every farm's ports first, and against
	// the address alone only if none serves it. Two farms of every
	// protocol on one address clash.
	AllProtocols
)

var protocols = enum[Protocol]{"protocol", []string{"tcp", "udp", "tcp+udp", "sctp", "all"}}

func (p Protocol) String() string { return protocols.name(p) }

// ParseProtocol parses "tcp", "udp", "tcp+udp", "sctp" or "all".
func ParseProtocol(s string) (Protocol, error) { return protocols.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Protocol) UnmarshalText(b []byte) (err error) { *p, err = ParseProtocol(string(b)); return }

// numbers returns the IP protocol numbers whose ports the farm serves:
// none for AllProtocols, which is served by its address alone.
func (p Protocol) numbers() []uint8 {
	switch p {
	case TCP:
		return []uint8{protoTCP}
	case UDP:
		return []uint8{protoUDP}
	case TCPUDP:
		return []uint8{protoTCP, protoUDP}
	case SCTP:
		return []uint8{protoSCTP}
	}
	return nil
}

// IP protocol numbers.
const (
	protoTCP  = 6
	protoUDP  = 17
	protoSCTP = 132
)

// Mode is how a farm makes replies return through the balancer.
type Mode uint8

// Modes. The zero value is NAT.
const (
	// NAT rewrites the client's source address (to Farm.Source, or by
	// masquerade), so backends reply to the balancer whatever their routes.
	NAT Mode = iota
	// DNAT keeps the client's address; the balancer must be the backends'
	// gateway for replies to return through it.
	DNAT
)

var modes = enum[Mode]{"mode", []string{"nat", "dnat"}}

func (m Mode) String() string { return modes.name(m) }

// ParseMode parses "nat" or "dnat".
func ParseMode(s string) (Mode, error) { return modes.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (m Mode) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *Mode) UnmarshalText(b []byte) (err error) { *m, err = ParseMode(string(b)); return }

// BackendState says whether a backend takes new connections.
type BackendState uint8

// Backend states. The zero value is Up.
const (
	// Up takes new connections.
	Up BackendState = iota
	// Drain takes no new connections; established ones continue.
	Drain
	// Down takes no new connections; established ones are cut if the
	// balancer flushes conntrack (Options.FlushConntrack).
	Down
)

var states = enum[BackendState]{"state", []string{"up", "drain", "down"}}

func (s BackendState) String() string { return states.name(s) }

// ParseBackendState parses "up", "drain" or "down".
func ParseBackendState(s string) (BackendState, error) { return states.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (s BackendState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *BackendState) UnmarshalText(b []byte) (err error) {
	*s, err = ParseBackendState(string(b))
	return
}
