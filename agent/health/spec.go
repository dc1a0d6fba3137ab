package health

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/l4nft/l4nft/lb"
)

// Type is the kind of check.
type Type uint8

// Check types. The zero value is None.
const (
	// None runs no check: the backend is always healthy.
	None Type = iota
	// TCP connects to the backend and closes the connection.
	TCP
	// HTTP sends GET Path and expects a status code within Expect.
	HTTP
)

var typeNames = []string{"none", "tcp", "http"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", t)
}

// ParseType parses "none", "tcp" or "http".
func ParseType(s string) (Type, error) {
	for i, n := range typeNames {
		if n == s {
			return Type(i), nil
		}
	}
	return 0, fmt.Errorf("unknown health check type %q (want %s)", s, strings.Join(typeNames, ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (t Type) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (t *Type) UnmarshalText(b []byte) (err error) { *t, err = ParseType(string(b)); return }

// Defaults filled in by Spec.WithDefaults.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultPath     = "/"
)

// DefaultExpect is the HTTP status range accepted by default.
var DefaultExpect = StatusRange{200, 399}

// MinInterval is the shortest interval accepted, so that a typo cannot make
// the agent flood its backends.
const MinInterval = 10 * time.Millisecond

// Spec describes the check of one backend.
type Spec struct {
	Type Type
	// Interval is the time between the starts of two checks.
	Interval time.Duration
	// Timeout bounds one check; at most Interval.
	Timeout time.Duration
	// Rise is the number of consecutive passes that make an unhealthy
	// backend healthy again; Fall the number of consecutive failures that
	// make a healthy backend unhealthy.
	Rise, Fall int
	// Path is the HTTP request path (HTTP only).
	Path string
	// Host is the HTTP Host header; empty means the backend's address.
	Host string
	// Expect is the range of HTTP status codes that pass (HTTP only).
	Expect StatusRange
}

// WithDefaults returns s with every zero field set to its default.
func (s Spec) WithDefaults() Spec {
	if s.Interval == 0 {
		s.Interval = DefaultInterval
	}
	if s.Timeout == 0 {
		s.Timeout = min(DefaultTimeout, s.Interval)
	}
	if s.Rise == 0 {
		s.Rise = DefaultRise
	}
	if s.Fall == 0 {
		s.Fall = DefaultFall
	}
	if s.Type == HTTP {
		if s.Path == "" {
			s.Path = DefaultPath
		}
		if s.Expect == (StatusRange{}) {
			s.Expect = DefaultExpect
		}
	}
	return s
}

// Problems returns what is wrong with a spec (after WithDefaults), each
// with the Field of the spec at fault (such as "timeout") and about no farm
// or backend; none for a usable spec.
func (s Spec) Problems() []lb.Problem {
	var out []lb.Problem
	add := func(field, format string, args ...any) {
		out = append(out, lb.Problem{FarmIndex: -1, BackendIndex: -1, Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if s.Type > HTTP {
		add("type", "unknown health check type %d", s.Type)
	}
	if s.Type == None {
		return out
	}
	if s.Interval < MinInterval {
		add("interval", "%s is shorter than %s", s.Interval, MinInterval)
	}
	if s.Timeout <= 0 {
		add("timeout", "%s is not a timeout", s.Timeout)
	} else if s.Timeout > s.Interval {
		add("timeout", "%s is longer than the interval %s", s.Timeout, s.Interval)
	}
	if s.Rise < 1 {
		add("rise", "%d is not a count (want at least 1)", s.Rise)
	}
	if s.Fall < 1 {
		add("fall", "%d is not a count (want at least 1)", s.Fall)
	}
	if s.Type == HTTP && !strings.HasPrefix(s.Path, "/") {
		add("path", "%q does not start with /", s.Path)
	}
	return out
}

// StatusRange is a range of HTTP status codes, Min to Max inclusive.
type StatusRange struct{ Min, Max int }

// ParseStatusRange parses "200" or "200-399".
func ParseStatusRange(s string) (StatusRange, error) {
	a, b, isRange := strings.Cut(strings.TrimSpace(s), "-")
	lo, err := parseStatus(a)
	if err != nil {
		return StatusRange{}, err
	}
	hi := lo
	if isRange {
		if hi, err = parseStatus(b); err != nil {
			return StatusRange{}, err
		}
	}
	if hi < lo {
		return StatusRange{}, fmt.Errorf("status range %q ends before it starts", s)
	}
	return StatusRange{lo, hi}, nil
}

func parseStatus(s string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil || n < 100 || n > 599 {
		return 0, fmt.Errorf("%q is not an HTTP status code (want 100-599)", s)
	}
	return n, nil
}

// Contains reports whether code is in the range.
func (r StatusRange) Contains(code int) bool { return r.Min <= code && code <= r.Max }

func (r StatusRange) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(r.Min)
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}
