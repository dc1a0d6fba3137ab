package lb

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/l4nft/l4nft/nft"
)

// Scheduler chooses a backend for each new connection.
type Scheduler uint8

// Schedulers. The zero value is Weight.
const (
	// Weight picks a backend at random with probability weight/total, as
	// the seed's `statistic --mode random` cascade does.
	Weight Scheduler = iota
	// RoundRobin takes the available backends in turn, each as many times
	// per cycle as its weight, interleaved (smooth weighted round robin).
	RoundRobin
	// Hash picks by a hash of Farm.HashFields: the same fields reach the
	// same backend while the farm's backends and weights stay the same,
	// and many clients split by weight.
	Hash
	// SymHash picks by a hash of the flow that is the same for both of
	// its directions, for farms that see both.
	SymHash
	// Consistent picks from a Maglev lookup table (Eisenbud et al., NSDI
	// 2016) by a hash of Farm.HashFields: removing one of N backends
	// moves only its own clients, adding one moves about 1/(N+1) of them,
	// and balancers with the same configuration choose alike without
	// sharing state.
	Consistent
)

var schedulers = enum[Scheduler]{"scheduler", []string{"weight", "roundrobin", "hash", "symhash", "consistent"}}

func (s Scheduler) String() string { return schedulers.name(s) }

// ParseScheduler parses "weight", "roundrobin", "hash", "symhash" or
// "consistent".
func ParseScheduler(s string) (Scheduler, error) { return schedulers.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (s Scheduler) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Scheduler) UnmarshalText(b []byte) (err error) { *s, err = ParseScheduler(string(b)); return }

// hashes reports whether the scheduler reads Farm.HashFields.
func (s Scheduler) hashes() bool { return s == Hash || s == Consistent }

// HashField is a packet field a hash or a persistence key reads.
type HashField uint8

// Hash fields. The zero value is not a field.
const (
	SrcIP HashField = iota + 1
	SrcPort
	DstIP
	DstPort
)

var hashFields = enum[HashField]{"hash field", []string{"", "src_ip", "src_port", "dst_ip", "dst_port"}}

func (h HashField) String() string { return hashFields.name(h) }

// ParseHashField parses "src_ip", "src_port", "dst_ip" or "dst_port".
func ParseHashField(s string) (HashField, error) { return hashFields.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (h HashField) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *HashField) UnmarshalText(b []byte) (err error) { *h, err = ParseHashField(string(b)); return }

// nftFields returns the fields as the nft package names them, in the
// canonical order src_ip, src_port, dst_ip, dst_port, so that the order
// they are listed in does not change the hash.
func nftFields(fs []HashField) []nft.Field {
	if len(fs) == 0 {
		return []nft.Field{nft.SrcIP}
	}
	sorted := slices.Clone(fs)
	slices.Sort(sorted)
	sorted = slices.Compact(sorted)
	out := make([]nft.Field, len(sorted))
	for i, f := range sorted {
		out[i] = nft.Field(f) // the same numbering
	}
	return out
}

// fieldsText writes fields in nft syntax for a family: ip saddr . th dport.
func fieldsText(fam nft.Family, fs []nft.Field) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		switch f {
		case nft.SrcIP:
			parts[i] = fam.String() + " saddr"
		case nft.DstIP:
			parts[i] = fam.String() + " daddr"
		case nft.SrcPort:
			parts[i] = "th sport"
		default:
			parts[i] = "th dport"
		}
	}
	return strings.Join(parts, " . ")
}

// Persistence is session affinity: a client's new connections go to the
// backend its last one went to, for TTL after the last new connection.
type Persistence struct {
	// By is what identifies a client.
	By PersistBy `json:"by"`
	// TTL is how long an entry lives after the client's last new
	// connection, 1s to 24h.
	TTL Duration `json:"ttl"`
}

// PersistBy is what identifies a client to persistence.
type PersistBy uint8

// Persistence keys. The zero value is PersistSrcIP.
const (
	// PersistSrcIP keys by the client's address.
	PersistSrcIP PersistBy = iota
	// PersistSrcIPPort keys by the client's address and port.
	PersistSrcIPPort
	// PersistDstIP keys by the destination address.
	PersistDstIP
)

var persistBys = enum[PersistBy]{"persistence key", []string{"src_ip", "src_ip_port", "dst_ip"}}

func (p PersistBy) String() string { return persistBys.name(p) }

// ParsePersistBy parses "src_ip", "src_ip_port" or "dst_ip".
func ParsePersistBy(s string) (PersistBy, error) { return persistBys.parse(s) }

// MarshalText implements encoding.TextMarshaler.
func (p PersistBy) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *PersistBy) UnmarshalText(b []byte) (err error) { *p, err = ParsePersistBy(string(b)); return }

func (p PersistBy) fields() []nft.Field {
	switch p {
	case PersistSrcIPPort:
		return []nft.Field{nft.SrcIP, nft.SrcPort}
	case PersistDstIP:
		return []nft.Field{nft.DstIP}
	}
	return []nft.Field{nft.SrcIP}
}

// Persistence TTL bounds.
const (
	MinPersistTTL = Duration(time.Second)
	MaxPersistTTL = Duration(24 * time.Hour)
)

// Duration is a time.Duration written as "5m" or "90s".
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("duration %q: want a number and a unit, such as 90s or 5m", b)
	}
	*d = Duration(v)
	return nil
}

// slotRun is a run of a farm's slots, lo to hi exclusive, that goes to
// one backend (an index into the available backends).
type slotRun struct {
	lo, hi  uint32
	backend int
}

// layout returns the number of slots a farm's scheduler draws from and
// the runs of slots of each available backend (up, in name order).
//
//   - weight, hash and symhash draw from scheduleSlots, split in
//     proportion to weight, one run per backend;
//   - roundrobin draws the slots 0..W-1 in turn, W the sum of the weights
//     over their greatest common divisor, each slot the next backend of a
//     smooth weighted round robin (nginx's), so that one cycle gives each
//     backend exactly its weight, interleaved;
//
// (The consistent scheduler has a table of its own: see consistentTable.)
func layout(f Farm, up []Backend) (uint32, []slotRun) {
	var runs []slotRun
	run := func(slot uint32, backend int) {
		if n := len(runs); n > 0 && runs[n-1].backend == backend && runs[n-1].hi == slot {
			runs[n-1].hi++
			return
		}
		runs = append(runs, slotRun{slot, slot + 1, backend})
	}
	weights := make([]int, len(up))
	for i, b := range up {
		weights[i] = b.Weight
	}
	switch f.Scheduler {
	case RoundRobin:
		seq := smoothRoundRobin(weights)
		for slot, b := range seq {
			run(uint32(slot), b)
		}
		return uint32(max(len(seq), 1)), runs
	}
	lo := uint32(0)
	for i, n := range apportion(weights, scheduleSlots) {
		runs = append(runs, slotRun{lo, lo + n, i})
		lo += n
	}
	return scheduleSlots, runs
}

// roundRobinCycle returns the length of a round robin cycle over weights:
// their sum over their greatest common divisor.
func roundRobinCycle(weights []int) int {
	g, sum := 0, 0
	for _, w := range weights {
		g = gcd(g, w)
		sum += w
	}
	if g == 0 {
		return 0
	}
	return sum / g
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// smoothRoundRobin returns one cycle of nginx's smooth weighted round
// robin over weights (reduced by their common divisor): each step every
// backend gains its weight, the one with the most credit is chosen and
// pays the total. Weights 5:1:1 give a a b a c a a rather than a a a a a b c.
func smoothRoundRobin(weights []int) []int {
	n := roundRobinCycle(weights)
	if n == 0 {
		return nil
	}
	g := 0
	for _, w := range weights {
		g = gcd(g, w)
	}
	credit := make([]int, len(weights))
	out := make([]int, n)
	for step := range out {
		best := 0
		for i, w := range weights {
			credit[i] += w / g
			if credit[i] > credit[best] {
				best = i
			}
		}
		credit[best] -= n
		out[step] = best
	}
	return out
}

func (d Duration) duration() time.Duration { return time.Duration(d) }

// consistentTable returns a consistent farm's Maglev table: its size (see
// maglevSize; it depends on every backend, available or not, so that a
// backend going down changes only its own slots) and, for each slot, the
// index of its backend among up. The table lives in a hash map keyed by
// the farm's lasting id, so a change of backends rewrites only the slots
// that change, in place.
func consistentTable(f Farm, up []Backend) (int, []int) {
	m := maglevSize(len(f.Backends), f.Slots)
	mb := make([]maglevBackend, len(up))
	for i, b := range up {
		mb[i] = maglevBackend{name: b.Name, weight: b.Weight}
	}
	return m, maglevTable(mb, m)
}
