package lb

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error that rejects a State or
// Options before anything is sent to the kernel.
var ErrInvalid = errors.New("invalid configuration")

// Problem is one thing wrong with a State: the one type in which the
// library, the agent's files, its API and its CLI all report problems.
type Problem struct {
	// File and Line locate the problem in a source, when there is one (a
	// configuration file, or "request body"); Line is 1-based, 0 unknown.
	File string `json:"file,omitempty"`
	Line int    `json:"line,omitempty"`
	// Farm and Backend name the object (empty when not about one).
	Farm    string `json:"farm,omitempty"`
	Backend string `json:"backend,omitempty"`
	// FarmIndex and BackendIndex locate it in State.Farms and
	// Farm.Backends; -1 when not about one.
	FarmIndex    int `json:"-"`
	BackendIndex int `json:"-"`
	// Field is the field at fault, such as "weight" or "ports[1]".
	Field string `json:"field,omitempty"`
	// Message says what is wrong.
	Message string `json:"message"`
}

// NewProblem returns a problem about no farm or backend in particular,
// such as one with the options ("table", "mark_mask") or a limit.
func NewProblem(field, message string) Problem {
	return Problem{FarmIndex: -1, BackendIndex: -1, Field: field, Message: message}
}

// UnmarshalJSON reads what MarshalJSON writes. The indexes are not
// written: they are -1 when the problem names no farm (backend), and 0
// otherwise, so that Path names the farm and backend by name again.
func (p *Problem) UnmarshalJSON(b []byte) error {
	type plain Problem
	var v struct {
		plain
		Path string `json:"path"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*p = Problem(v.plain)
	p.FarmIndex, p.BackendIndex = -1, -1
	if p.Farm != "" {
		p.FarmIndex = 0
	}
	if p.Backend != "" {
		p.BackendIndex = 0
	}
	return nil
}

// MarshalJSON adds the problem's Path to its fields.
func (p Problem) MarshalJSON() ([]byte, error) {
	type plain Problem
	return json.Marshal(struct {
		plain
		Path string `json:"path,omitempty"`
	}{plain(p), p.Path()})
}

// Path names the field, such as farms[web].backends[app0].weight.
func (p Problem) Path() string {
	var b strings.Builder
	if p.FarmIndex >= 0 {
		fmt.Fprintf(&b, "farms[%s]", label(p.Farm, p.FarmIndex))
	}
	if p.BackendIndex >= 0 {
		fmt.Fprintf(&b, ".backends[%s]", label(p.Backend, p.BackendIndex))
	}
	if p.Field != "" {
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(p.Field)
	}
	return b.String()
}

func label(name string, i int) string {
	if name == "" {
		return fmt.Sprint(i)
	}
	return name
}

// String formats the problem as "file:line: path: message", leaving out
// what is unknown.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	if path := p.Path(); path != "" {
		b.WriteString(path)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// ValidationError lists every problem found in a State. It matches
// ErrInvalid.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string { return ProblemsError(e.Problems) }

// MaxProblemsShown is how many problems an error message lists; the rest
// are counted ("... and 999 more"), so that a message stays small whatever
// the input.
const MaxProblemsShown = 20

// ProblemsError formats problems as one line: "invalid configuration (2
// problems): a; b", at most MaxProblemsShown of them.
func ProblemsError(problems []Problem) string {
	n := min(len(problems), MaxProblemsShown)
	lines := make([]string, n, n+1)
	for i, p := range problems[:n] {
		lines[i] = p.String()
	}
	if more := len(problems) - n; more > 0 {
		lines = append(lines, fmt.Sprintf("... and %d more", more))
	}
	noun := "problems"
	if len(problems) == 1 {
		noun = "problem"
	}
	return fmt.Sprintf("invalid configuration (%d %s): %s", len(problems), noun, strings.Join(lines, "; "))
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

const nameRule = "want 1-32 letters, digits, '_' or '-', starting with a letter or digit"

func validName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// Validate checks the options and a State against the options' limits and
// returns a *ValidationError listing every problem, or nil. Problems with
// the options have FarmIndex -1 and Field "table" or "mark_mask".
func Validate(s State, opts Options) error {
	opts = opts.withDefaults()
	v := validator{}
	if !validName(opts.Table) {
		v.add(Problem{FarmIndex: -1, BackendIndex: -1, Field: "table", Message: fmt.Sprintf("%q: %s", opts.Table, nameRule)})
	}
	if !contiguous(opts.MarkMask) {
		v.add(Problem{FarmIndex: -1, BackendIndex: -1, Field: "mark_mask", Message: fmt.Sprintf("%s: want one contiguous run of bits", markText(opts.MarkMask))})
		return v.err() // the limits below depend on it
	}
	var claims []claim
	everyOn := map[netip.Addr]int{} // the farm of protocol all on each address
	farmNames := map[string]int{}
	total := 0
	for fi, f := range s.Farms {
		farm := func(field, format string, args ...any) {
			v.add(Problem{Farm: f.Name, FarmIndex: fi, BackendIndex: -1, Field: field, Message: fmt.Sprintf(format, args...)})
		}
		if !validName(f.Name) {
			farm("name", "%q: %s", f.Name, nameRule)
		} else if prev, dup := farmNames[f.Name]; dup {
			farm("name", "duplicate farm name (also farms[%d])", prev)
		} else {
			farmNames[f.Name] = fi
		}
		addrOK := checkAddr(f.Address, func(m string) { farm("address", "%s", m) })
		every := f.Protocol == AllProtocols
		switch {
		case every && len(f.Ports) > 0:
			farm("ports", "protocol all serves every port of the address; ports apply to tcp, udp, tcp+udp and sctp only")
		case !every && len(f.Ports) == 0:
			farm("ports", "at least one port is required")
		}
		for pi, r := range f.Ports {
			field := func() string { return "ports[" + strconv.Itoa(pi) + "]" }
			switch {
			case r.First == 0 || r.Last == 0:
				farm(field(), "port 0 is not a port (want 1-65535)")
			case r.Last < r.First:
				farm(field(), "range %d-%d ends before it starts", r.First, r.Last)
			}
			for pj := range pi {
				if o := f.Ports[pj]; o.First <= r.Last && r.First <= o.Last {
					farm(field(), "%s overlaps ports[%d] %s", r, pj, o)
				}
			}
		}
		if !protocols.ok(f.Protocol) {
			farm("protocol", "unknown protocol %d (want %s)", f.Protocol, strings.Join(protocols.valid(), ", "))
		}
		if !modes.ok(f.Mode) {
			farm("mode", "unknown mode %d (want %s)", f.Mode, strings.Join(modes.valid(), ", "))
		}
		if !schedulers.ok(f.Scheduler) {
			farm("scheduler", "unknown scheduler %d (want %s)", f.Scheduler, strings.Join(schedulers.valid(), ", "))
		}
		v.schedulerOptions(f, farm)
		v.admissionProblems(f, farm)
		if f.Source.IsValid() {
			switch {
			case f.Mode == DNAT:
				farm("source", "dnat mode keeps the client's address; source applies to nat mode only")
			case checkAddr(f.Source, func(m string) { farm("source", "%s", m) }) && addrOK && f.Source.Unmap().Is4() != f.Address.Unmap().Is4():
				farm("source", "%s is not of the same family as address %s", f.Source, f.Address)
			}
		}
		if addrOK && every {
			// Farms of ports on the same address do not clash with it:
			// their ports are looked up first.
			if prev, dup := everyOn[f.Address.Unmap()]; dup {
				farm("address", "%s protocol all is already served by farm %q (farms[%d])", f.Address, s.Farms[prev].Name, prev)
			} else {
				everyOn[f.Address.Unmap()] = fi
			}
		}
		if addrOK && protocols.ok(f.Protocol) {
			for _, proto := range f.Protocol.numbers() {
				for _, r := range f.Ports {
					if r.First != 0 && r.First <= r.Last {
						claims = append(claims, claim{f.Address.Unmap(), proto, r, fi})
					}
				}
			}
		}
		var names map[string]int // only for large farms; see below
		if len(f.Backends) > 64 {
			names = make(map[string]int, len(f.Backends))
		}
		for bi, b := range f.Backends {
			backend := func(field, format string, args ...any) {
				v.add(Problem{Farm: f.Name, FarmIndex: fi, Backend: b.Name, BackendIndex: bi, Field: field, Message: fmt.Sprintf(format, args...)})
			}
			if !validName(b.Name) {
				backend("name", "%q: %s", b.Name, nameRule)
			} else if prev := firstBackend(f.Backends[:bi], names, b.Name); prev >= 0 {
				backend("name", "duplicate backend name (also backends[%d])", prev)
			} else if names != nil {
				names[b.Name] = bi
			}
			if checkAddr(b.Address, func(m string) { backend("address", "%s", m) }) && addrOK &&
				b.Address.Unmap().Is4() != f.Address.Unmap().Is4() {
				backend("address", "%s is not of the same family as the farm's address %s", b.Address, f.Address)
			}
			if every && b.Port != 0 {
				backend("port", "%d: protocol all keeps the port the client connected to; want 0 (omitted)", b.Port)
			}
			switch {
			case b.Weight == 0:
				backend("weight", "0 is not a weight (want 1-%d); to stop new connections set state drain", MaxWeight)
			case b.Weight < 1 || b.Weight > MaxWeight:
				backend("weight", "%d is outside 1-%d", b.Weight, MaxWeight)
			}
			if b.MaxConnections < 0 || b.MaxConnections > MaxLimit {
				backend("max_connections", "%d is outside 0-%d (0: no limit)", b.MaxConnections, MaxLimit)
			}
			if b.Priority < 0 || b.Priority > MaxPriority {
				backend("priority", "%d is outside 1-%d (0 means 1)", b.Priority, MaxPriority)
			}
			if !states.ok(b.State) {
				backend("state", "unknown state %d (want %s)", b.State, strings.Join(states.valid(), ", "))
			}
			total++
		}
	}
	v.conflicts(s, claims)
	// One mark more than the farms, backends and lasting farm ids: a
	// farm's schedule changes under a spare mark.
	ids := 0
	for _, f := range s.Farms {
		if needsID(f) {
			ids++
		}
	}
	if max := opts.MaxMarks(); total+len(s.Farms)+ids+1 > max {
		v.add(Problem{FarmIndex: -1, BackendIndex: -1, Field: "farms",
			Message: fmt.Sprintf("%d farms (%d with options that need an id) and %d backends need a mark each and one spare, but mark mask %s has only %d; widen Options.MarkMask",
				len(s.Farms), ids, total, markText(opts.MarkMask), max)})
	}
	return v.err()
}

// claim is a farm's claim on a service: address, protocol, port range.
type claim struct {
	addr  netip.Addr
	proto uint8
	ports PortRange
	farm  int
}

// conflicts reports the services claimed by two farms. Single ports, the
// common case, meet in a map; ranges are sorted and checked against each
// other and, by binary search, against the single ports: O(n log r).
func (v *validator) conflicts(s State, claims []claim) {
	type service struct {
		addr  netip.Addr
		proto uint8
		port  uint16
	}
	report := func(a, b claim) {
		if a.farm == b.farm {
			return
		}
		first, second := a, b
		if first.farm > second.farm {
			first, second = second, first
		}
		f := s.Farms[second.farm]
		v.add(Problem{Farm: f.Name, FarmIndex: second.farm, BackendIndex: -1, Field: "ports",
			Message: fmt.Sprintf("%s %s port %s is already served by farm %q (farms[%d]) port %s",
				f.Address, protoName(a.proto), second.ports, s.Farms[first.farm].Name, first.farm, first.ports)})
	}
	exact := make(map[service]claim, len(claims))
	var ranges []claim
	for _, c := range claims {
		if c.ports.First != c.ports.Last {
			ranges = append(ranges, c)
			continue
		}
		k := service{c.addr, c.proto, c.ports.First}
		if o, dup := exact[k]; dup {
			report(o, c)
			continue
		}
		exact[k] = c
	}
	if len(ranges) == 0 {
		return
	}
	before := func(a, b claim) int {
		if c := a.addr.Compare(b.addr); c != 0 {
			return c
		}
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		return int(a.ports.First) - int(b.ports.First)
	}
	slices.SortFunc(ranges, before)
	for i, c := range ranges {
		for j := i - 1; j >= 0; j-- {
			o := ranges[j]
			if o.addr != c.addr || o.proto != c.proto {
				break
			}
			if o.ports.Last >= c.ports.First {
				report(o, c)
			}
		}
	}
	for _, c := range exact {
		// The last range starting at or before the port, and those before
		// it on the same address and protocol, are the only candidates.
		i, _ := slices.BinarySearchFunc(ranges, c, before)
		if i < len(ranges) && ranges[i].addr == c.addr && ranges[i].proto == c.proto && ranges[i].ports.First == c.ports.First {
			i++
		}
		for j := i - 1; j >= 0; j-- {
			o := ranges[j]
			if o.addr != c.addr || o.proto != c.proto {
				break
			}
			if o.ports.Last >= c.ports.First {
				report(o, c)
			}
		}
	}
}

// firstBackend returns the index of the backend named name in earlier,
// or -1: by scanning, which beats allocating a map for the few backends of
// most farms, or in names when the caller keeps one.
func firstBackend(earlier []Backend, names map[string]int, name string) int {
	if names != nil {
		if i, ok := names[name]; ok {
			return i
		}
		return -1
	}
	return slices.IndexFunc(earlier, func(o Backend) bool { return o.Name == name })
}

// protoName names an IP protocol as nft does.
func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoSCTP:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

func checkAddr(a netip.Addr, bad func(string)) bool {
	switch {
	case !a.IsValid():
		bad("missing or unparsable address")
	case a.Unmap().IsUnspecified():
		bad(fmt.Sprintf("%s is not a usable address", a))
	case a.Zone() != "":
		bad(fmt.Sprintf("%s: zones are not supported", a))
	default:
		return true
	}
	return false
}

type validator struct{ problems []Problem }

func (v *validator) add(p Problem) { v.problems = append(v.problems, p) }

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	sort.SliceStable(v.problems, func(i, j int) bool { return v.problems[i].FarmIndex < v.problems[j].FarmIndex })
	return &ValidationError{Problems: v.problems}
}

// Scheduler limits: they bound the elements one farm's schedule takes.
const (
	// MaxRoundRobinCycle bounds a round robin's cycle, the sum of its
	// weights over their greatest common divisor: one slot each.
	MaxRoundRobinCycle = 1 << 16
	// MaxSlots bounds a consistent scheduler's table.
	MaxSlots = 1 << 20
)

// schedulerOptions checks the options that go with the scheduler.
func (v *validator) schedulerOptions(f Farm, farm func(field, format string, args ...any)) {
	if len(f.HashFields) > 0 && !f.Scheduler.hashes() {
		farm("hash_fields", "apply to the hash and consistent schedulers only, not %s", f.Scheduler)
	}
	for i, h := range f.HashFields {
		if !hashFields.ok(h) {
			farm(fmt.Sprintf("hash_fields[%d]", i), "unknown hash field %d (want %s)", h, strings.Join(hashFields.valid(), ", "))
		} else if slices.Contains(f.HashFields[:i], h) {
			farm(fmt.Sprintf("hash_fields[%d]", i), "%s is listed twice", h)
		}
	}
	switch {
	case f.Slots != 0 && f.Scheduler != Consistent:
		farm("slots", "applies to the consistent scheduler only, not %s", f.Scheduler)
	case f.Slots < 0 || f.Slots > MaxSlots:
		farm("slots", "%d is outside 1-%d (0 means 100 per backend)", f.Slots, MaxSlots)
	case f.Slots != 0 && f.Slots < 100*len(f.Backends):
		farm("slots", "%d is fewer than 100 per backend (%d backends need %d)", f.Slots, len(f.Backends), 100*len(f.Backends))
	case f.Scheduler == Consistent && maglevSize(len(f.Backends), f.Slots) > MaxSlots:
		farm("slots", "%d backends need %d slots, more than %d", len(f.Backends), maglevSize(len(f.Backends), f.Slots), MaxSlots)
	}
	if f.Scheduler == RoundRobin {
		weights := make([]int, 0, len(f.Backends))
		for _, b := range f.Backends {
			if b.Weight > 0 && b.Weight <= MaxWeight {
				weights = append(weights, b.Weight)
			}
		}
		if n := roundRobinCycle(weights); n > MaxRoundRobinCycle {
			farm("backends", "a round robin cycle over these weights is %d slots, more than %d: use weights with a common divisor, or smaller ones", n, MaxRoundRobinCycle)
		}
	}
	if p := f.Persistence; p != nil {
		if !persistBys.ok(p.By) {
			farm("persistence.by", "unknown persistence key %d (want %s)", p.By, strings.Join(persistBys.valid(), ", "))
		}
		if p.TTL < MinPersistTTL || p.TTL > MaxPersistTTL {
			farm("persistence.ttl", "%s is outside %s-%s", p.TTL, MinPersistTTL, MaxPersistTTL)
		}
	}
}
