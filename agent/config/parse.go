package config

import (
	"bytes"
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

// Load reads, parses and validates the file, or the configuration
// directory, at path. On any problem it returns an *Error listing all of
// them.
func Load(path string) (*Config, error) {
	if IsDir(path) {
		c, _, err := LoadDir(path)
		return c, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	return ParseAndValidate(path, data)
}

// ParseAndValidate is Load for data read from a file named name.
func ParseAndValidate(name string, data []byte) (*Config, error) {
	c, perr := Parse(name, data)
	if c == nil {
		return nil, perr
	}
	verr := Validate(c)
	if perr == nil && verr == nil {
		return c, nil
	}
	return nil, Merge(perr, verr)
}

// follow names, for a field whose value did not parse, the fields whose
// problems lb finds only because it was left at its default: a misspelt
// scheduler is not weight, and its hash_fields and slots are not wrong
// for being given; a misspelt protocol is not tcp, and its helpers are
// not wrong for following no tcp connection; a rate that does not parse
// is not absent, and the burst is not wrong for applying to none. A
// field ending in "[]" stands for every index of the list.
var follow = map[string][]string{
	"scheduler":                        {"hash_fields", "slots"},
	"protocol":                         {"helpers[]"},
	"limits.new_per_second":            {"limits.burst"},
	"limits.new_per_client_per_second": {"limits.burst"},
}

// Merge joins the problems of parsing and validating, dropping the
// validation problems about a field parsing already reported (or that
// follow from one, see follow), into one *lb.ValidationError (nil when
// there are none).
func Merge(perr, verr error) error {
	var problems []lb.Problem
	seen := map[string]bool{}
	for _, p := range Problems(perr) {
		problems = append(problems, p)
		seen[p.Path()] = true
		for _, f := range follow[p.Field] {
			p.Field = f
			seen[p.Path()] = true
		}
	}
	for _, p := range Problems(verr) {
		if seen[p.Path()] {
			continue
		}
		if i := strings.LastIndexByte(p.Field, '['); i >= 0 && strings.HasSuffix(p.Field, "]") {
			every := p
			every.Field = p.Field[:i] + "[]"
			if seen[every.Path()] {
				continue
			}
		}
		problems = append(problems, p)
	}
	return newError(problems)
}

// Parse parses data, read from a file named name, without validating it
// against lb's rules (see Validate). It returns the configuration parsed
// so far with an *Error when a field is unknown or a value does not parse,
// and a nil Config only when the text is not YAML at all.
func Parse(name string, data []byte) (*Config, error) {
	p := &parser{file: name, limits: Limits{}.WithDefaults()}
	root, err := p.document(data)
	if err != nil {
		return nil, err
	}
	c := &Config{src: name, pos: positions{}}
	p.config(root, c)
	return c, newError(p.problems)
}

// ParseFarm parses one farm, as sent to the API, from a source named name
// (such as "request body"), holding at most lim.MaxBackends backends. Like
// Parse, it returns an *lb.ValidationError listing every problem; see
// ParseAndValidateFarm.
func ParseFarm(name string, data []byte, lim Limits) (Farm, error) {
	f, _, err := parseFarm(name, data, "", lim)
	return f, err
}

func parseFarm(source string, data []byte, name string, lim Limits) (f Farm, parsed bool, err error) {
	p := &parser{file: source, limits: lim.WithDefaults()}
	root, err := p.document(data)
	if err != nil {
		return Farm{}, false, err
	}
	f = p.farm(root, label(cmp.Or(nameOf(root), name), 0))
	f.src = source
	if f.Name == "" {
		f.Name = name
	}
	return f, true, newError(p.problems)
}

// ParseAndValidateFarm parses one farm as ParseFarm does, named name when
// it does not say (name may be empty), and validates it alone with opts as
// ValidateFarm does: the problems of both are reported at once. It
// returns the farm only when there are none.
func ParseAndValidateFarm(source string, data []byte, name string, lim Limits, opts lb.Options) (Farm, error) {
	f, parsed, perr := parseFarm(source, data, name, lim)
	if !parsed { // not YAML: nothing to validate
		return Farm{}, perr
	}
	verr := ValidateFarm(&f, opts)
	if perr == nil && verr == nil {
		return f, nil
	}
	return Farm{}, Merge(perr, verr)
}

// parser walks a YAML node tree and collects every problem.
type parser struct {
	file     string
	limits   Limits
	problems []lb.Problem
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document parses data into its root node.
func (p *parser) document(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		prob := ProblemAt(p.file, 0, "", err.Error())
		if m := lineRE.FindStringSubmatch(err.Error()); m != nil {
			prob.Line, _ = strconv.Atoi(m[1])
			prob.Message = m[2]
		}
		if err.Error() == "EOF" {
			prob.Message = "the file is empty (write `farms: []` to serve nothing)"
		}
		return nil, &lb.ValidationError{Problems: []lb.Problem{prob}}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &lb.ValidationError{Problems: []lb.Problem{ProblemAt(p.file, extra.Line, "", "more than one YAML document")}}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, &lb.ValidationError{Problems: []lb.Problem{ProblemAt(p.file, doc.Line, "",
			"the file is empty (write `farms: []` to serve nothing)")}}
	}
	if line, err := checkAliases(doc.Content[0]); err != nil {
		return nil, &lb.ValidationError{Problems: []lb.Problem{ProblemAt(p.file, line, "", err.Error())}}
	}
	return doc.Content[0], nil
}

func (p *parser) add(n *yaml.Node, path, format string, args ...any) {
	p.problems = append(p.problems, ProblemAt(p.file, n.Line, path, fmt.Sprintf(format, args...)))
}

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = resolve(n)
	return n.Kind == yaml.ScalarNode && n.Tag == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	default:
		return "something else"
	}
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// mapping calls handle[key] for every key of the mapping n, reporting
// unknown and duplicate keys. Null values count as absent. record, if not
// nil, gets every known key's line.
func (p *parser) mapping(n *yaml.Node, path string, handle map[string]func(v *yaml.Node), record func(key string, line int)) bool {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "want a mapping of fields, got %s", describe(n))
		return false
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolve(n.Content[i+1])
		fp := join(path, k.Value)
		if prev, dup := seen[k.Value]; dup {
			p.add(k, fp, "duplicate field (also on line %d)", prev)
			continue
		}
		seen[k.Value] = k.Line
		h, ok := handle[k.Value]
		if !ok {
			p.add(k, fp, "unknown field %q (want one of %s)", k.Value, strings.Join(slices.Sorted(maps.Keys(handle)), ", "))
			continue
		}
		if record != nil {
			record(k.Value, k.Line)
		}
		if isNull(v) {
			continue
		}
		h(v)
	}
	return true
}

func (p *parser) scalar(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		p.add(n, path, "want a single value, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) str(n *yaml.Node, path string, dst *string) {
	if s, ok := p.scalar(n, path); ok {
		*dst = s
	}
}

func (p *parser) integer(n *yaml.Node, path string, lo, hi int, dst *int) {
	s, ok := p.scalar(n, path)
	if !ok {
		return
	}
	v, err := strconv.Atoi(s)
	if err != nil || n.Tag == "!!str" && s != strings.TrimSpace(s) {
		p.add(n, path, "%q is not a whole number", s)
		return
	}
	if v < lo || v > hi {
		p.add(n, path, "%d is outside %d-%d", v, lo, hi)
		return
	}
	*dst = v
}

func (p *parser) port(n *yaml.Node, path string, dst *uint16) {
	var v int
	before := len(p.problems)
	p.integer(n, path, 0, 65535, &v)
	if len(p.problems) == before {
		*dst = uint16(v)
	}
}

func (p *parser) boolean(n *yaml.Node, path string, dst *bool) {
	s, ok := p.scalar(n, path)
	if !ok {
		return
	}
	switch s {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		p.add(n, path, "%q is not true or false", s)
	}
}

// text parses a scalar with an encoding.TextUnmarshaler.
func (p *parser) text(n *yaml.Node, path string, dst encoding.TextUnmarshaler) {
	s, ok := p.scalar(n, path)
	if !ok {
		return
	}
	if err := dst.UnmarshalText([]byte(s)); err != nil {
		p.add(n, path, "%v", err)
	}
}

func (p *parser) addr(n *yaml.Node, path string, dst *netip.Addr) {
	s, ok := p.scalar(n, path)
	if !ok {
		return
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		p.add(n, path, "%q is not an IP address", s)
		return
	}
	*dst = a
}

func (p *parser) config(n *yaml.Node, c *Config) {
	var farms *yaml.Node
	p.mapping(n, "", map[string]func(*yaml.Node){
		"table": func(v *yaml.Node) { p.str(v, "table", &c.Table) },
		"options": func(v *yaml.Node) {
			p.mapping(v, "options", map[string]func(*yaml.Node){
				"mark_mask":         func(v *yaml.Node) { p.text(v, "options.mark_mask", &c.Options.MarkMask) },
				"local_connections": func(v *yaml.Node) { p.boolean(v, "options.local_connections", &c.Options.LocalConnections) },
				"flush_conntrack":   func(v *yaml.Node) { p.boolean(v, "options.flush_conntrack", &c.Options.FlushConntrack) },
			}, func(k string, line int) { c.pos["options."+k] = line })
		},
		"api": func(v *yaml.Node) {
			p.mapping(v, "api", map[string]func(*yaml.Node){
				"socket":     func(v *yaml.Node) { p.str(v, "api.socket", &c.API.Socket) },
				"listen":     func(v *yaml.Node) { p.str(v, "api.listen", &c.API.Listen) },
				"token_file": func(v *yaml.Node) { p.str(v, "api.token_file", &c.API.TokenFile) },
				"tls_cert":   func(v *yaml.Node) { p.str(v, "api.tls_cert", &c.API.TLSCert) },
				"tls_key":    func(v *yaml.Node) { p.str(v, "api.tls_key", &c.API.TLSKey) },
			}, func(k string, line int) { c.pos["api."+k] = line })
		},
		"limits": func(v *yaml.Node) {
			p.mapping(v, "limits", map[string]func(*yaml.Node){
				"max_farms":    func(v *yaml.Node) { p.integer(v, "limits.max_farms", 1, 1<<24, &c.Limits.MaxFarms) },
				"max_backends": func(v *yaml.Node) { p.integer(v, "limits.max_backends", 1, 1<<24, &c.Limits.MaxBackends) },
			}, func(k string, line int) { c.pos["limits."+k] = line })
		},
		"farms": func(v *yaml.Node) { farms = v }, // once the limits are known
	}, func(k string, line int) { c.pos[k] = line })
	p.limits = c.Limits.WithDefaults()
	if v := farms; v != nil {
		if v.Kind != yaml.SequenceNode {
			p.add(v, "farms", "want a list of farms, got %s", describe(v))
		} else {
			items := p.bounded(v, "farms", "farms", "limits.max_farms", p.limits.MaxFarms)
			c.Farms = make([]Farm, 0, len(items))
			for i, fn := range items {
				fn = resolve(fn)
				f := p.farm(fn, label(nameOf(fn), i))
				f.src = p.file
				c.Farms = append(c.Farms, f)
			}
		}
	}
	if c.Farms == nil {
		c.Farms = []Farm{}
	}
}

// label is how lb names an object in a path: its name, or its index.
func label(name string, i int) string {
	if name == "" {
		return strconv.Itoa(i)
	}
	return name
}

// nameOf returns the "name" field of a mapping, if it is a scalar.
func nameOf(n *yaml.Node) string {
	if n.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if v := resolve(n.Content[i+1]); n.Content[i].Value == "name" && v.Kind == yaml.ScalarNode && v.Tag != "!!null" {
			return v.Value
		}
	}
	return ""
}

// farmNamed parses a farm file's farm, named want unless it says
// otherwise.
func (p *parser) farmNamed(n *yaml.Node, want string) Farm {
	return p.farm(n, cmp.Or(nameOf(n), want))
}

// farm parses a farm, called farms[lbl] in problems.
func (p *parser) farm(n *yaml.Node, lbl string) Farm {
	f := Farm{pos: positions{"": n.Line}}
	path := "farms[" + lbl + "]"
	at := func(field string) string { return path + "." + field }
	p.mapping(n, path, map[string]func(*yaml.Node){
		"name":      func(v *yaml.Node) { p.str(v, at("name"), &f.Name) },
		"address":   func(v *yaml.Node) { p.addr(v, at("address"), &f.Address) },
		"protocol":  func(v *yaml.Node) { p.text(v, at("protocol"), &f.Protocol) },
		"mode":      func(v *yaml.Node) { p.text(v, at("mode"), &f.Mode) },
		"scheduler": func(v *yaml.Node) { p.text(v, at("scheduler"), &f.Scheduler) },
		"source":    func(v *yaml.Node) { p.addr(v, at("source"), &f.Source) },
		"hash_fields": func(v *yaml.Node) {
			items := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				items = v.Content
			}
			f.HashFields = nil // an empty list is the default, as an absent one
			for j, hn := range items {
				hn = resolve(hn)
				field := fmt.Sprintf("hash_fields[%d]", j)
				f.pos[field] = hn.Line
				// A field that does not parse stays as the zero field,
				// which lb reports at the same path (Merge keeps one), so
				// that the fields after it keep their index and line.
				var h lb.HashField
				p.text(hn, at(field), &h)
				f.HashFields = append(f.HashFields, h)
			}
		},
		"slots": func(v *yaml.Node) {
			p.integer(v, at("slots"), math.MinInt, math.MaxInt, &f.Slots) // lb.Validate words the range
		},
		"persistence": func(v *yaml.Node) { f.Persistence = p.persistence(v, at("persistence"), f.pos) },
		"limits":      func(v *yaml.Node) { f.Limits = p.farmLimits(v, at("limits"), f.pos) },
		"tcp_strict":  func(v *yaml.Node) { p.boolean(v, at("tcp_strict"), &f.TCPStrict) },
		"allow":       func(v *yaml.Node) { f.Allow = p.prefixes(v, path, "allow", f.pos) },
		"deny":        func(v *yaml.Node) { f.Deny = p.prefixes(v, path, "deny", f.pos) },
		"helpers": func(v *yaml.Node) {
			items := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				items = v.Content
			}
			f.Helpers = nil // an empty list is none, as an absent one
			for j, hn := range items {
				hn = resolve(hn)
				field := "helpers[" + strconv.Itoa(j) + "]"
				f.pos[field] = hn.Line
				// As for hash_fields: a helper that does not parse stays
				// as the zero helper, which lb reports at the same path.
				var h lb.Helper
				p.text(hn, at(field), &h)
				f.Helpers = append(f.Helpers, h)
			}
		},
		"ports": func(v *yaml.Node) {
			items := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				items = v.Content
			}
			f.Ports = []lb.PortRange{}
			for j, pn := range items {
				pn = resolve(pn)
				field := fmt.Sprintf("ports[%d]", j)
				f.pos[field] = pn.Line
				var r lb.PortRange
				before := len(p.problems)
				p.text(pn, at(field), &r)
				if len(p.problems) == before {
					f.Ports = append(f.Ports, r)
				}
			}
		},
		"health": func(v *yaml.Node) { f.Health = p.health(v, at("health"), f.pos, "health.") },
		"backends": func(v *yaml.Node) {
			if v.Kind != yaml.SequenceNode {
				p.add(v, at("backends"), "want a list of backends, got %s", describe(v))
				return
			}
			items := p.bounded(v, at("backends"), "backends", "limits.max_backends", p.limits.MaxBackends)
			f.Backends = make([]Backend, 0, len(items))
			for j, bn := range items {
				bn = resolve(bn)
				rel := fmt.Sprintf("backends[%d]", j)
				f.pos[rel] = bn.Line
				f.Backends = append(f.Backends, p.backend(bn, at("backends["+label(nameOf(bn), j)+"]"), f.pos, rel+"."))
			}
		},
	}, func(k string, line int) { f.pos[k] = line })
	if f.Backends == nil {
		f.Backends = []Backend{}
	}
	return f
}

// persistence parses a farm's persistence mapping; its fields' lines go
// in pos as "persistence.by" and "persistence.ttl".
func (p *parser) persistence(n *yaml.Node, path string, pos positions) *lb.Persistence {
	ps := &lb.Persistence{}
	at := func(field string) string { return path + "." + field }
	ttl := false
	if !p.mapping(n, path, map[string]func(*yaml.Node){
		"by":  func(v *yaml.Node) { p.text(v, at("by"), &ps.By) },
		"ttl": func(v *yaml.Node) { ttl = true; p.text(v, at("ttl"), &ps.TTL) },
	}, func(k string, line int) { pos["persistence."+k] = line }) {
		return nil // reported; lb has nothing to add
	}
	if !ttl {
		// lb would say "0s is outside 1s-24h0m0s": say what is missing.
		p.add(n, at("ttl"), "missing: want how long a client's entry lives, such as 5m (%s-%s)", lb.MinPersistTTL, lb.MaxPersistTTL)
	}
	return ps
}

// farmLimits parses a farm's limits mapping; its fields' lines go in pos
// as "limits.new_per_second" and so on. The numbers' ranges are lb's to
// word.
func (p *parser) farmLimits(n *yaml.Node, path string, pos positions) *lb.Limits {
	l := &lb.Limits{}
	at := func(field string) string { return path + "." + field }
	number := func(field string, dst *int) func(*yaml.Node) {
		return func(v *yaml.Node) { p.integer(v, at(field), math.MinInt, math.MaxInt, dst) }
	}
	if !p.mapping(n, path, map[string]func(*yaml.Node){
		"new_per_second":            number("new_per_second", &l.NewPerSecond),
		"burst":                     number("burst", &l.Burst),
		"new_per_client_per_second": number("new_per_client_per_second", &l.NewPerClientPerSecond),
		"established_per_client":    number("established_per_client", &l.EstablishedPerClient),
		"action":                    func(v *yaml.Node) { p.text(v, at("action"), &l.Action) },
	}, func(k string, line int) { pos["limits."+k] = line }) {
		return nil // reported; lb has nothing to add
	}
	return l
}

// prefixes parses the list of prefixes (or the one prefix) of field list
// of the farm at path, each as "192.0.2.0/24", or an address alone for
// the prefix of that one address. Each item's line goes in pos as
// "list[i]". A prefix that does not parse stays as the zero prefix, which
// lb reports at the same path (Merge keeps one), so that those after it
// keep their index and line. A list longer than lb.MaxPrefixes is
// reported as lb would, and what is beyond the limit is not read.
func (p *parser) prefixes(v *yaml.Node, path, list string, pos positions) []netip.Prefix {
	items := []*yaml.Node{v}
	if v.Kind == yaml.SequenceNode {
		items = v.Content
	}
	if len(items) == 0 {
		return nil // an empty list is none, as an absent one
	}
	if len(items) > lb.MaxPrefixes {
		// At the key's line, where lb's problems about the list are.
		p.problems = append(p.problems, ProblemAt(p.file, cmp.Or(pos[list], v.Line), path+"."+list,
			fmt.Sprintf("%d prefixes, more than %d", len(items), lb.MaxPrefixes)))
		items = items[:lb.MaxPrefixes]
	}
	out := make([]netip.Prefix, len(items))
	for j, n := range items {
		n = resolve(n)
		field := list + "[" + strconv.Itoa(j) + "]"
		pos[field] = n.Line
		s, ok := p.scalar(n, path+"."+field)
		if !ok {
			continue
		}
		if pr, err := parsePrefix(s); err == nil {
			out[j] = pr
		} else {
			p.add(n, path+"."+field, "%q is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address", s)
		}
	}
	return out
}

// parsePrefix parses "192.0.2.0/24", or an address alone as the prefix
// of that one address.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.IndexByte(s, '/') >= 0 {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" { // as netip.ParsePrefix, no zone
		return netip.Prefix{}, errors.New("not an address")
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func (p *parser) backend(n *yaml.Node, path string, pos positions, rel string) Backend {
	b := Backend{Backend: lb.Backend{Weight: 1}}
	at := func(field string) string { return path + "." + field }
	p.mapping(n, path, map[string]func(*yaml.Node){
		"name":    func(v *yaml.Node) { p.str(v, at("name"), &b.Name) },
		"address": func(v *yaml.Node) { p.addr(v, at("address"), &b.Address) },
		"port":    func(v *yaml.Node) { p.port(v, at("port"), &b.Port) },
		"weight": func(v *yaml.Node) {
			b.Weight = 0                                                    // a weight that does not parse is not the default
			p.integer(v, at("weight"), math.MinInt, math.MaxInt, &b.Weight) // lb.Validate words the range
		},
		"state": func(v *yaml.Node) { p.text(v, at("state"), &b.State) },
		"priority": func(v *yaml.Node) {
			p.integer(v, at("priority"), math.MinInt, math.MaxInt, &b.Priority) // lb.Validate words the range
		},
		"max_connections": func(v *yaml.Node) {
			p.integer(v, at("max_connections"), math.MinInt, math.MaxInt, &b.MaxConnections)
		},
		"health": func(v *yaml.Node) { b.Health = p.health(v, at("health"), pos, rel+"health.") },
	}, func(k string, line int) { pos[rel+k] = line })
	return b
}

func (p *parser) health(n *yaml.Node, path string, pos positions, rel string) *Health {
	h := &Health{}
	at := func(field string) string { return path + "." + field }
	p.mapping(n, path, map[string]func(*yaml.Node){
		"type": func(v *yaml.Node) {
			if s, ok := p.scalar(v, at("type")); ok {
				if _, err := health.ParseType(s); err != nil {
					p.add(v, at("type"), "%v", err)
					return
				}
				h.Type = s
			}
		},
		"interval": func(v *yaml.Node) { p.text(v, at("interval"), &h.Interval) },
		"timeout":  func(v *yaml.Node) { p.text(v, at("timeout"), &h.Timeout) },
		"rise":     func(v *yaml.Node) { p.integer(v, at("rise"), 1, 1000, &h.Rise) },
		"fall":     func(v *yaml.Node) { p.integer(v, at("fall"), 1, 1000, &h.Fall) },
		"port":     func(v *yaml.Node) { p.port(v, at("port"), &h.Port) },
		"path":     func(v *yaml.Node) { p.str(v, at("path"), &h.Path) },
		"host":     func(v *yaml.Node) { p.str(v, at("host"), &h.Host) },
		"expect": func(v *yaml.Node) {
			if s, ok := p.scalar(v, at("expect")); ok {
				if _, err := health.ParseStatusRange(s); err != nil {
					p.add(v, at("expect"), "%v", err)
					return
				}
				h.Expect = s
			}
		},
	}, func(k string, line int) { pos[rel+k] = line })
	return h
}

// bounded returns the items of the list n, at most max of them, and
// reports a longer list: what is beyond the limit is not even read.
func (p *parser) bounded(n *yaml.Node, path, what, limit string, max int) []*yaml.Node {
	if len(n.Content) <= max {
		return n.Content
	}
	p.add(n, path, "%d %s: more than %s (%d)", len(n.Content), what, limit, max)
	return n.Content[:max]
}

// MaxAliasNodes bounds what YAML aliases may add to a document: the
// number of nodes a walk through every alias reaches beyond the nodes
// written may be at most this or the number written, whichever is larger
// (so a large file sharing a health block by alias is fine, and the walk
// costs at most twice the document). A small document whose aliases refer to aliases (a "billion
// laughs") would otherwise cost time and memory exponential in its size.
const MaxAliasNodes = 10000

// checkAliases refuses a document whose aliases expand to more than
// MaxAliasNodes nodes, or refer to a node that holds them. It costs two
// walks of the nodes written, and returns the line of the alias at fault.
func checkAliases(root *yaml.Node) (int, error) {
	const limit = 1 << 40 // sizes saturate here: no overflow
	written := 0
	var count func(n *yaml.Node)
	count = func(n *yaml.Node) {
		written++
		if n.Kind != yaml.AliasNode {
			for _, c := range n.Content {
				count(c)
			}
		}
	}
	count(root)
	size := map[*yaml.Node]int{} // expanded size of each node; -1 while it is walked
	cycle, worst, worstLine := 0, 0, 0
	var walk func(n *yaml.Node) int
	walk = func(n *yaml.Node) int {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			if s, ok := size[n.Alias]; ok && s < 0 {
				cycle = cmp.Or(cycle, n.Line)
				return 1
			}
			s := walk(n.Alias)
			if s > worst {
				worst, worstLine = s, n.Line
			}
			return s
		}
		if s, ok := size[n]; ok {
			return max(s, 1)
		}
		size[n] = -1
		total := 1
		for _, c := range n.Content {
			total = min(total+walk(c), limit)
		}
		size[n] = total
		return total
	}
	total := walk(root)
	if cycle != 0 {
		return cycle, errors.New("a YAML alias refers to a node that holds it")
	}
	if total-written > max(MaxAliasNodes, written) {
		return worstLine, fmt.Errorf("YAML aliases expand the document by more than %d nodes: refused", max(MaxAliasNodes, written))
	}
	return 0, nil
}

// BackendChange is a change of one backend, as sent to the API; nil
// fields stay as they are.
type BackendChange struct {
	Weight *int             `json:"weight,omitempty"`
	State  *lb.BackendState `json:"state,omitempty"`
}

// ParseBackendChange parses a change of backend backend of farm farm from
// a source named name (such as "request body") with the file's rules,
// strict as they are:
// unknown fields, duplicate fields and fields written in another case are
// problems, and a weight out of range is worded as in a file. It returns
// an *lb.ValidationError listing every problem, the parser's and the
// validator's together.
func ParseBackendChange(name string, data []byte, farm, backend string) (BackendChange, error) {
	p := &parser{file: name}
	root, err := p.document(data)
	if err != nil {
		return BackendChange{}, err
	}
	var ch BackendChange
	pos := positions{}
	path := "farms[" + farm + "].backends[" + backend + "]"
	p.mapping(root, path, map[string]func(*yaml.Node){
		"weight": func(v *yaml.Node) {
			w := 0
			before := len(p.problems)
			p.integer(v, path+".weight", math.MinInt, math.MaxInt, &w)
			if len(p.problems) == before {
				ch.Weight = &w
			}
		},
		"state": func(v *yaml.Node) {
			var s lb.BackendState
			before := len(p.problems)
			p.text(v, path+".state", &s)
			if len(p.problems) == before {
				ch.State = &s
			}
		},
	}, func(k string, line int) { pos[k] = line })
	if ch.Weight != nil {
		// The library words the range, as it does for a file.
		probe := lb.State{Farms: []lb.Farm{{Name: "probe", Address: netip.MustParseAddr("192.0.2.1"), Ports: []lb.PortRange{lb.Port(1)},
			Backends: []lb.Backend{{Name: "probe", Address: netip.MustParseAddr("192.0.2.2"), Weight: *ch.Weight}}}}}
		for _, vp := range Problems(lb.Validate(probe, lb.Options{})) {
			if vp.Field == "weight" {
				p.problems = append(p.problems, ProblemAt(name, pos.lookup("weight"), path+".weight", vp.Message))
			}
		}
	}
	if len(p.problems) == 0 && ch.Weight == nil && ch.State == nil {
		p.problems = append(p.problems, ProblemAt(name, root.Line, path, `nothing to change: want "weight" and/or "state"`))
	}
	return ch, newError(p.problems)
}
