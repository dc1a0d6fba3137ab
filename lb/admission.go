package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Limits bound a farm's new connections. Zero values mean no limit.
type Limits struct {
	// NewPerSecond bounds the farm's new connections per second, all
	// clients together, with bursts of Burst (0: as many as one second's).
	NewPerSecond int `json:"new_per_second,omitempty"`
	Burst        int `json:"burst,omitempty"`
	// NewPerClientPerSecond bounds each client address's new connections
	// per second, with the same Burst.
	NewPerClientPerSecond int `json:"new_per_client_per_second,omitempty"`
	// EstablishedPerClient bounds each client address's connections open
	// at once, as conntrack counts them: a closing TCP connection counts
	// until it reaches TIME_WAIT.
	EstablishedPerClient int `json:"established_per_client,omitempty"`
	// Action is what a connection over a limit gets.
	Action LimitAction `json:"action,omitempty"`
}

// MaxLimit bounds every number of Limits.
const MaxLimit = 1_000_000

// LimitAction is what a connection over a limit gets.
type LimitAction uint8

// Limit actions. The zero value is Reject.
const (
	// Reject refuses the connection: a TCP reset, or ICMP port
	// unreachable for other protocols.
	Reject LimitAction = iota
	// Drop drops its packets silently.
	Drop
)

var limitActions = enum[LimitAction]{"limit action", []string{"reject", "drop"}}

func (a LimitAction) String() string { return limitActions.name(a) }

// ParseLimitAction parses "reject" or "drop".
func ParseLimitAction(s string) (LimitAction, error) { return limitActions.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (a LimitAction) MarshalText() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (a *LimitAction) UnmarshalText(b []byte) (err error) {
	*a, err = ParseLimitAction(string(b))
	return
}

// Helper is a conntrack helper: it follows a protocol's control
// connection and lets the connections it announces through, NATed alike.
type Helper uint8

// Helpers. The zero value is not a helper.
const (
	FTP Helper = iota + 1
	TFTP
	SIP
)

var helpers = enum[Helper]{"helper", []string{"", "ftp", "tftp", "sip"}}

func (h Helper) String() string { return helpers.name(h) }

// ParseHelper parses "ftp", "tftp" or "sip".
func ParseHelper(s string) (Helper, error) { return helpers.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (h Helper) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *Helper) UnmarshalText(b []byte) (err error) { *h, err = ParseHelper(string(b)); return }

// helperObject is a ct helper object of the table: one per helper and
// transport protocol.
type helperObject struct {
	name   string // the object's name in the table
	helper string // the kernel's helper
	proto  uint8
}

// helperObjects are the table's helper objects. The kernel loads a
// helper's module when its object is made.
var helperObjects = []helperObject{
	{"ftp", "ftp", protoTCP},
	{"tftp", "tftp", protoUDP},
	{"sip_udp", "sip", protoUDP},
	{"sip_tcp", "sip", protoTCP},
}

// objectsOf returns the helper objects a farm's connections of protocol
// proto use.
func objectsOf(h Helper, proto uint8) []helperObject {
	var out []helperObject
	for _, o := range helperObjects {
		if o.helper == h.String() && o.proto == proto {
			out = append(out, o)
		}
	}
	return out
}

// Rejection counts, per reason, the new connections a farm refused or
// dropped. The counts are kept by the farm's lasting id: they survive
// every change of the farm while it has an option that refuses
// connections (limits, lists, max_connections), and restart when the farm
// is removed or loses them all. Invalid is counted
// per service, and restarts when tcp_strict is turned off or the farm's
// ports change.
type Rejections struct {
	Denied            uint64 `json:"denied,omitempty"`
	NotAllowed        uint64 `json:"not_allowed,omitempty"`
	Rate              uint64 `json:"rate,omitempty"`
	ClientRate        uint64 `json:"client_rate,omitempty"`
	ClientConnections uint64 `json:"client_connections,omitempty"`
	Invalid           uint64 `json:"invalid,omitempty"`
	// BackendFull counts first packets dropped because the backend
	// chosen had its MaxConnections.
	BackendFull uint64 `json:"backend_full,omitempty"`
}

// rejectReason names a counter of Rejections in the rejects set.
type rejectReason uint32

const (
	reasonDenied rejectReason = iota + 1
	reasonNotAllowed
	reasonRate
	reasonClientRate
	reasonClientConnections
	reasonInvalid
	reasonBackendFull
)

var reasonNames = map[rejectReason]string{
	reasonDenied: "denied", reasonNotAllowed: "not_allowed", reasonRate: "rate",
	reasonClientRate: "client_rate", reasonClientConnections: "client_connections", reasonInvalid: "invalid",
	reasonBackendFull: "backend_full",
}

// add counts n rejections for reason.
func (r *Rejections) add(reason rejectReason, n uint64) {
	switch reason {
	case reasonDenied:
		r.Denied += n
	case reasonNotAllowed:
		r.NotAllowed += n
	case reasonRate:
		r.Rate += n
	case reasonClientRate:
		r.ClientRate += n
	case reasonClientConnections:
		r.ClientConnections += n
	case reasonInvalid:
		r.Invalid += n
	case reasonBackendFull:
		r.BackendFull += n
	}
}

// reasons returns the rejection reasons a farm counts in the rejects set:
// every one, for a farm with any option that refuses connections, so that
// a count outlives the option that made it (tcp_strict's drops are
// counted in its own sets).
func reasons(f Farm) []rejectReason {
	if !refuses(f) {
		return nil
	}
	return []rejectReason{reasonDenied, reasonNotAllowed, reasonRate, reasonClientRate, reasonClientConnections, reasonBackendFull}
}

// refuses reports whether a farm has an option that refuses connections
// and counts them in the rejects set.
func refuses(f Farm) bool {
	return f.Limits != nil || len(f.Allow) > 0 || len(f.Deny) > 0 || limitsBackends(f)
}

// helperProtos returns the transport protocols whose connections a
// farm's helpers follow: its own, or TCP and UDP for a farm of every
// protocol.
func helperProtos(f Farm) []uint8 {
	if f.Protocol == AllProtocols {
		return []uint8{protoTCP, protoUDP}
	}
	return f.Protocol.numbers()
}

// MaxPrefixes bounds the allow and deny lists of one farm.
const MaxPrefixes = 100_000

// admissionProblems checks limits, lists and helpers.
func (v *validator) admissionProblems(f Farm, farm func(field, format string, args ...any)) {
	if l := f.Limits; l != nil {
		for _, n := range []struct {
			field string
			v     int
		}{{"limits.new_per_second", l.NewPerSecond}, {"limits.burst", l.Burst}, {"limits.new_per_client_per_second", l.NewPerClientPerSecond}, {"limits.established_per_client", l.EstablishedPerClient}} {
			if n.v < 0 || n.v > MaxLimit {
				farm(n.field, "%d is outside 0-%d (0: no limit)", n.v, MaxLimit)
			}
		}
		if l.Burst != 0 && l.NewPerSecond == 0 && l.NewPerClientPerSecond == 0 {
			farm("limits.burst", "applies to new_per_second and new_per_client_per_second, and neither is set")
		}
		if !limitActions.ok(l.Action) {
			farm("limits.action", "unknown limit action %d (want %s)", l.Action, strings.Join(limitActions.valid(), ", "))
		}
	}
	for _, list := range []struct {
		field    string
		prefixes []netip.Prefix
	}{{"allow", f.Allow}, {"deny", f.Deny}} {
		if len(list.prefixes) > MaxPrefixes {
			farm(list.field, "%d prefixes, more than %d", len(list.prefixes), MaxPrefixes)
			continue
		}
		for i, p := range list.prefixes {
			field := fmt.Sprintf("%s[%d]", list.field, i)
			switch {
			case !p.IsValid():
				farm(field, "missing or unparsable prefix")
			case f.Address.IsValid() && p.Addr().Unmap().Is4() != f.Address.Unmap().Is4():
				farm(field, "%s is not of the same family as address %s", p, f.Address)
			}
		}
	}
	if f.TCPStrict && f.Protocol == AllProtocols {
		farm("tcp_strict", "applies to farms with ports, not to protocol all")
	}
	for i, h := range f.Helpers {
		field := fmt.Sprintf("helpers[%d]", i)
		switch {
		case !helpers.ok(h):
			farm(field, "unknown helper %d (want %s)", h, strings.Join(helpers.valid(), ", "))
		case slices.Contains(f.Helpers[:i], h):
			farm(field, "%s is listed twice", h)
		case protocols.ok(f.Protocol) && !slices.ContainsFunc(helperProtos(f), func(p uint8) bool { return len(objectsOf(h, p)) > 0 }):
			farm(field, "the %s helper follows no %s connection", h, f.Protocol)
		}
	}
}
