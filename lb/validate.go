package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error that rejects a State or
// Options before anything is sent to the kernel.
var ErrInvalid = errors.New("invalid configuration")

// Problem is one thing wrong with a State.
type Problem struct {
	// Farm and Backend name the object (empty when not about one).
	Farm, Backend string
	// FarmIndex and BackendIndex locate it in State.Farms and
	// Farm.Backends; -1 when not about one.
	FarmIndex, BackendIndex int
	// Field is the field at fault, such as "weight" or "ports[1]".
	Field string
	// Message says what is wrong.
	Message string
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

func (p Problem) String() string { return p.Path() + ": " + p.Message }

// ValidationError lists every problem found in a State. It matches
// ErrInvalid.
type ValidationError struct {
	Problems []Problem
}

func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return fmt.Sprintf("invalid configuration (%d problems): %s", len(lines), strings.Join(lines, "; "))
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

const nameRule = "want 1-32 letters, digits, '_' or '-', starting with a letter or digit"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

func validName(s string) bool { return nameRE.MatchString(s) }

// Validate checks a State against the options' limits and returns a
// *ValidationError listing every problem, or nil.
func Validate(s State, opts Options) error {
	opts = opts.withDefaults()
	v := validator{}
	claims := map[claimKey][]claim{}
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
		if len(f.Ports) == 0 {
			farm("ports", "at least one port is required")
		}
		for pi, r := range f.Ports {
			field := fmt.Sprintf("ports[%d]", pi)
			switch {
			case r.First == 0 || r.Last == 0:
				farm(field, "port 0 is not a port (want 1-65535)")
			case r.Last < r.First:
				farm(field, "range %d-%d ends before it starts", r.First, r.Last)
			}
			for pj := range pi {
				if o := f.Ports[pj]; o.First <= r.Last && r.First <= o.Last {
					farm(field, "%s overlaps ports[%d] %s", r, pj, o)
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
		if f.Source.IsValid() {
			switch {
			case f.Mode == DNAT:
				farm("source", "dnat mode keeps the client's address; source applies to nat mode only")
			case checkAddr(f.Source, func(m string) { farm("source", "%s", m) }) && addrOK && f.Source.Unmap().Is4() != f.Address.Unmap().Is4():
				farm("source", "%s is not of the same family as address %s", f.Source, f.Address)
			}
		}
		if addrOK && f.Ports != nil && protocols.ok(f.Protocol) {
			for _, proto := range f.Protocol.numbers() {
				for _, r := range f.Ports {
					k := claimKey{f.Address.Unmap(), proto}
					for _, c := range claims[k] {
						if c.farm != fi && c.ports.First <= r.Last && r.First <= c.ports.Last {
							farm("ports", "%s %s port %s is already served by farm %q (farms[%d]) port %s",
								f.Address, protoName(proto), r, s.Farms[c.farm].Name, c.farm, c.ports)
						}
					}
					claims[k] = append(claims[k], claim{fi, r})
				}
			}
		}
		names := map[string]int{}
		for bi, b := range f.Backends {
			backend := func(field, format string, args ...any) {
				v.add(Problem{Farm: f.Name, FarmIndex: fi, Backend: b.Name, BackendIndex: bi, Field: field, Message: fmt.Sprintf(format, args...)})
			}
			if !validName(b.Name) {
				backend("name", "%q: %s", b.Name, nameRule)
			} else if prev, dup := names[b.Name]; dup {
				backend("name", "duplicate backend name (also backends[%d])", prev)
			} else {
				names[b.Name] = bi
			}
			if checkAddr(b.Address, func(m string) { backend("address", "%s", m) }) && addrOK &&
				b.Address.Unmap().Is4() != f.Address.Unmap().Is4() {
				backend("address", "%s is not of the same family as the farm's address %s", b.Address, f.Address)
			}
			switch {
			case b.Weight == 0:
				backend("weight", "0 is not a weight (want 1-%d); to stop new connections set state drain", MaxWeight)
			case b.Weight < 1 || b.Weight > MaxWeight:
				backend("weight", "%d is outside 1-%d", b.Weight, MaxWeight)
			}
			if !states.ok(b.State) {
				backend("state", "unknown state %d (want %s)", b.State, strings.Join(states.valid(), ", "))
			}
			total++
		}
	}
	if max := opts.MaxMarks(); total+len(s.Farms) > max {
		v.add(Problem{FarmIndex: -1, BackendIndex: -1, Field: "farms",
			Message: fmt.Sprintf("%d farms and %d backends need a mark each, but mark mask %s has only %d; widen Options.MarkMask",
				len(s.Farms), total, markText(opts.MarkMask), max)})
	}
	return v.err()
}

type claimKey struct {
	addr  netip.Addr
	proto uint8
}

type claim struct {
	farm  int
	ports PortRange
}

func protoName(p uint8) string {
	if p == protoTCP {
		return "tcp"
	}
	return "udp"
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
