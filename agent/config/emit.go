package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/l4nft/l4nft/lb"
	"go.yaml.in/yaml/v3"
)

// The configuration is written by hand-rolled code rather than by a YAML
// encoder: the schema is small and fixed, and encoding a farm this way
// costs a few microseconds where going through a generic encoder cost
// about a hundred (1.1-1.3 s for 10,000 farms). TestEmitRoundTrip checks
// that everything written reads back the same.

// isJSON reports whether a file named name is written as JSON.
func isJSON(name string) bool { return strings.EqualFold(filepath.Ext(name), ".json") }

var (
	plainRE  = regexp.MustCompile(`^[A-Za-z0-9_/][A-Za-z0-9_./:@+-]*$`)
	ipv4RE   = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$`)
	rangeRE  = regexp.MustCompile(`^[0-9]+-[0-9]+$`)
	durRE    = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$`)
	reserved = map[string]bool{"true": true, "false": true, "yes": true, "no": true, "on": true, "off": true,
		"y": true, "n": true, "null": true, "~": true}
)

// scalar appends s as a YAML scalar: plain when no YAML reader (1.1 or
// 1.2) can take it for anything but that string, double-quoted otherwise.
func scalar(dst []byte, s string) []byte {
	if plain(s) {
		return append(dst, s...)
	}
	return strconv.AppendQuote(dst, s)
}

func plain(s string) bool {
	if !plainRE.MatchString(s) || strings.HasSuffix(s, ":") || reserved[strings.ToLower(s)] {
		return false
	}
	if c := s[0]; c >= '0' && c <= '9' {
		// Numbers, octal, hexadecimal, sexagesimal, dates: quote all but
		// the shapes known to be strings.
		return ipv4RE.MatchString(s) || rangeRE.MatchString(s) || durRE.MatchString(s) || ipv6(s)
	}
	return true
}

// ipv6 reports whether s is an IPv6 address no YAML 1.1 reader takes for
// a sexagesimal number: one with a letter or a "::".
func ipv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6() && (strings.Contains(s, "::") || strings.ContainsAny(s, "abcdefABCDEF"))
}

func field(dst []byte, indent, key string) []byte {
	dst = append(dst, indent...)
	dst = append(dst, key...)
	return append(dst, ": "...)
}

func strField(dst []byte, indent, key, v string) []byte {
	return append(scalar(field(dst, indent, key), v), '\n')
}

func intField(dst []byte, indent, key string, v int) []byte {
	return append(strconv.AppendInt(field(dst, indent, key), int64(v), 10), '\n')
}

func textField(dst []byte, indent, key string, v interface{ MarshalText() ([]byte, error) }) []byte {
	b, _ := v.MarshalText() // the types written never fail
	return strField(dst, indent, key, string(b))
}

// appendFarm appends f as a YAML block mapping whose first line starts
// with first and the others with indent (first is "  - " in a list).
func appendFarm(dst []byte, f *Farm, first, indent string) []byte {
	dst = strField(dst, first, "name", f.Name)
	dst = textField(dst, indent, "address", f.Address)
	switch {
	case len(f.Ports) == 0 && f.Protocol == lb.AllProtocols:
		// A farm of every protocol has no ports to write.
	case len(f.Ports) == 0:
		dst = append(field(dst, indent, "ports"), "[]\n"...)
	default:
		dst = append(append(dst, indent...), "ports:\n"...)
		for _, p := range f.Ports {
			b, _ := p.MarshalText()
			dst = append(scalar(append(dst, indent+"  - "...), string(b)), '\n')
		}
	}
	dst = textField(dst, indent, "protocol", f.Protocol)
	dst = textField(dst, indent, "mode", f.Mode)
	dst = textField(dst, indent, "scheduler", f.Scheduler)
	dst = appendNames(dst, indent, "hash_fields", f.HashFields)
	if f.Slots != 0 {
		dst = intField(dst, indent, "slots", f.Slots)
	}
	if p := f.Persistence; p != nil {
		dst = append(append(dst, indent...), "persistence:\n"...)
		dst = textField(dst, indent+"  ", "by", p.By)
		dst = textField(dst, indent+"  ", "ttl", p.TTL)
	}
	if l := f.Limits; l != nil {
		dst = append(append(dst, indent...), "limits:\n"...)
		in := indent + "  "
		for _, n := range []struct {
			key string
			v   int
		}{{"new_per_second", l.NewPerSecond}, {"burst", l.Burst}, {"new_per_client_per_second", l.NewPerClientPerSecond},
			{"established_per_client", l.EstablishedPerClient}} {
			if n.v != 0 {
				dst = intField(dst, in, n.key, n.v)
			}
		}
		dst = textField(dst, in, "action", l.Action)
	}
	if f.TCPStrict {
		dst = append(field(dst, indent, "tcp_strict"), "true\n"...)
	}
	dst = appendPrefixes(dst, indent, "allow", f.Allow)
	dst = appendPrefixes(dst, indent, "deny", f.Deny)
	dst = appendNames(dst, indent, "helpers", f.Helpers)
	if f.Source.IsValid() {
		dst = textField(dst, indent, "source", f.Source)
	}
	if f.Health != nil {
		dst = appendHealth(dst, f.Health, indent)
	}
	if len(f.Backends) == 0 {
		return append(field(dst, indent, "backends"), "[]\n"...)
	}
	dst = append(append(dst, indent...), "backends:\n"...)
	for i := range f.Backends {
		b := &f.Backends[i]
		in := indent + "    "
		dst = strField(dst, indent+"  - ", "name", b.Name)
		dst = textField(dst, in, "address", b.Address)
		if b.Port != 0 {
			dst = intField(dst, in, "port", int(b.Port))
		}
		dst = intField(dst, in, "weight", b.Weight)
		dst = textField(dst, in, "state", b.State)
		if b.Priority != 0 {
			dst = intField(dst, in, "priority", b.Priority)
		}
		if b.MaxConnections != 0 {
			dst = intField(dst, in, "max_connections", b.MaxConnections)
		}
		if b.Health != nil {
			dst = appendHealth(dst, b.Health, in)
		}
	}
	return dst
}

// sizeHint is about the size of f written: its lists of prefixes may
// make it large.
func sizeHint(f *Farm) int { return 512 + 32*(len(f.Allow)+len(f.Deny)) }

// appendPrefixes appends a list of prefixes, one per line, quoted: a
// prefix needs no escaping, and is written without going through scalar's
// patterns, so that a list of thousands costs a copy of each.
func appendPrefixes(dst []byte, indent, key string, prefixes []netip.Prefix) []byte {
	if len(prefixes) == 0 {
		return dst
	}
	dst = append(append(append(dst, indent...), key...), ":\n"...)
	for _, p := range prefixes {
		dst = append(append(dst, indent...), "  - \""...)
		dst = append(p.AppendTo(dst), "\"\n"...)
	}
	return dst
}

func appendHealth(dst []byte, h *Health, indent string) []byte {
	if *h == (Health{}) {
		return append(field(dst, indent, "health"), "{}\n"...)
	}
	dst = append(append(dst, indent...), "health:\n"...)
	in := indent + "  "
	if h.Type != "" {
		dst = strField(dst, in, "type", h.Type)
	}
	if h.Interval != 0 {
		dst = strField(dst, in, "interval", time.Duration(h.Interval).String())
	}
	if h.Timeout != 0 {
		dst = strField(dst, in, "timeout", time.Duration(h.Timeout).String())
	}
	if h.Rise != 0 {
		dst = intField(dst, in, "rise", h.Rise)
	}
	if h.Fall != 0 {
		dst = intField(dst, in, "fall", h.Fall)
	}
	if h.Port != 0 {
		dst = intField(dst, in, "port", int(h.Port))
	}
	if h.Path != "" {
		dst = strField(dst, in, "path", h.Path)
	}
	if h.Host != "" {
		dst = strField(dst, in, "host", h.Host)
	}
	if h.Expect != "" {
		dst = strField(dst, in, "expect", h.Expect)
	}
	return dst
}

// appendHeader appends the fields of c other than farms.
func appendHeader(dst []byte, c *Config) []byte {
	if c.Table != "" {
		dst = strField(dst, "", "table", c.Table)
	}
	if c.Options != (Options{}) {
		dst = append(dst, "options:\n"...)
		if c.Options.MarkMask != 0 {
			dst = textField(dst, "  ", "mark_mask", c.Options.MarkMask)
		}
		if c.Options.LocalConnections {
			dst = append(field(dst, "  ", "local_connections"), "true\n"...)
		}
		if c.Options.FlushConntrack {
			dst = append(field(dst, "  ", "flush_conntrack"), "true\n"...)
		}
	}
	if c.API != (API{}) {
		dst = append(dst, "api:\n"...)
		for _, kv := range [][2]string{{"socket", c.API.Socket}, {"listen", c.API.Listen}, {"token_file", c.API.TokenFile},
			{"tls_cert", c.API.TLSCert}, {"tls_key", c.API.TLSKey}} {
			if kv[1] != "" {
				dst = strField(dst, "  ", kv[0], kv[1])
			}
		}
	}
	if c.Limits != (Limits{}) {
		dst = append(dst, "limits:\n"...)
		if c.Limits.MaxFarms != 0 {
			dst = intField(dst, "  ", "max_farms", c.Limits.MaxFarms)
		}
		if c.Limits.MaxBackends != 0 {
			dst = intField(dst, "  ", "max_backends", c.Limits.MaxBackends)
		}
	}
	return dst
}

// EncodeYAML returns c as a YAML document in canonical form: fields in
// the order of the schema, defaults written out, strings quoted only when
// they need it.
func (c *Config) EncodeYAML() []byte {
	frags := make([][]byte, len(c.Farms))
	for i := range c.Farms {
		frags[i] = c.Farms[i].Fragment("l4nft.yaml")
	}
	return c.Assemble("l4nft.yaml", frags)
}

// MarshalYAML implements yaml.Marshaler, so that yaml.Marshal of a Config
// writes the document EncodeYAML does, which Parse reads back, rather
// than the Go fields' names.
func (c *Config) MarshalYAML() (any, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(c.EncodeYAML(), &doc); err != nil {
		return nil, err
	}
	if len(doc.Content) == 0 {
		return map[string]any{}, nil
	}
	return doc.Content[0], nil
}

// Marshal returns c encoded for a file named name: JSON if the name ends
// in .json, YAML otherwise.
func (c *Config) Marshal(name string) ([]byte, error) {
	frags := make([][]byte, len(c.Farms))
	for i := range c.Farms {
		frags[i] = c.Farms[i].Fragment(name)
	}
	return c.Assemble(name, frags), nil
}

// Fragment returns f encoded as one item of the farms list of a file
// named name. A single-file configuration is Assemble of its header and
// every farm's fragment, so a writer that keeps the fragments re-encodes
// only the farm that changed.
func (f *Farm) Fragment(name string) []byte {
	if isJSON(name) {
		b, err := json.MarshalIndent(f, "    ", "  ")
		if err != nil {
			panic(fmt.Sprintf("encoding farm %q: %v", f.Name, err)) // no field of Farm can fail
		}
		return append([]byte("    "), b...)
	}
	return appendFarm(make([]byte, 0, sizeHint(f)), f, "  - ", "    ")
}

// Assemble returns the file named name holding c's fields other than
// farms, and farms, each a Fragment for that name.
func (c *Config) Assemble(name string, farms [][]byte) []byte {
	size := 256
	for _, f := range farms {
		size += len(f) + 2
	}
	out := make([]byte, 0, size)
	if isJSON(name) {
		head := *c
		head.Farms = nil
		b, err := json.MarshalIndent(&head, "", "  ")
		if err != nil {
			panic(fmt.Sprintf("encoding configuration: %v", err))
		}
		// b ends with `"farms": null\n}`: put the list there.
		b = b[:strings.LastIndex(string(b), "null")]
		out = append(out, b...)
		if len(farms) == 0 {
			return append(out, "[]\n}\n"...)
		}
		out = append(out, "[\n"...)
		for i, f := range farms {
			out = append(out, f...)
			if i < len(farms)-1 {
				out = append(out, ',')
			}
			out = append(out, '\n')
		}
		return append(out, "  ]\n}\n"...)
	}
	out = appendHeader(out, c)
	if len(farms) == 0 {
		return append(out, "farms: []\n"...)
	}
	out = append(out, "farms:\n"...)
	for _, f := range farms {
		out = append(out, f...)
	}
	return out
}

// MarshalFarmFile returns f as the content of its own file named name, in
// a configuration directory: a YAML mapping, or JSON if name ends in
// .json.
func (f *Farm) MarshalFarmFile(name string) []byte {
	if isJSON(name) {
		b, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			panic(fmt.Sprintf("encoding farm %q: %v", f.Name, err))
		}
		return append(b, '\n')
	}
	return appendFarm(make([]byte, 0, sizeHint(f)), f, "", "")
}

// MarshalMain returns c's fields other than farms as the main file of a
// configuration directory, named name.
func (c *Config) MarshalMain(name string) []byte {
	if isJSON(name) {
		head := *c
		head.Farms = nil
		b, _ := json.Marshal(struct {
			Table   string  `json:"table,omitempty"`
			Options Options `json:"options,omitzero"`
			API     API     `json:"api,omitzero"`
			Limits  Limits  `json:"limits,omitzero"`
		}{head.Table, head.Options, head.API, head.Limits})
		return append(b, '\n')
	}
	out := appendHeader(nil, c)
	if len(out) == 0 {
		return []byte("{}\n")
	}
	return out
}

// appendNames writes a flow list of names, [a, b], if there are any.
func appendNames[T fmt.Stringer](dst []byte, indent, key string, vs []T) []byte {
	if len(vs) == 0 {
		return dst
	}
	dst = append(field(dst, indent, key), '[')
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ", "...)
		}
		dst = scalar(dst, v.String())
	}
	return append(dst, "]\n"...)
}
