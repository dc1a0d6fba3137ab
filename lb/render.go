package lb

import (
	"fmt"
	"slices"
	"strings"

	"github.com/l4nft/l4nft/nft"
)

// Render returns the ruleset Apply would install for s on a fresh table,
// in nft syntax, each rule commented with the iptables rule of the seed
// design it replaces. `nft -f` of the text installs an equivalent table
// (replacing one of the same name) and touches nothing else.
//
// Farm options that need a farm chain write constants (a farm's ids) as
// `ct mark & 0x00000000 | 0x...`, which is how the rules load them, since
// nft cannot parse a bare constant in a concatenation. nft 1.0.6 runs out
// of registers writing the rules of an IPv6 farm that persists by address
// and port; Apply sends them fine.
//
// One difference is not visible in the text: nft declares the schedule
// map as a concatenation, which the kernel stores as a pipapo set, where
// Apply declares the same 8-byte key as one field, stored as an rbtree that
// loads and changes many times faster. Both match the same elements.
func Render(s State, opts Options) (string, error) {
	opts = opts.withDefaults()
	if err := opts.check(); err != nil {
		return "", err
	}
	if err := Validate(s, opts); err != nil {
		return "", err
	}
	marks := newMarkTable(opts).begin()
	farms := map[string]*compiledFarm{}
	for _, f := range s.Farms {
		marks.ensure(objectKey{f.Name, ""})
		for _, be := range f.Backends {
			marks.ensure(objectKey{f.Name, be.Name})
		}
		if needsID(f) {
			marks.ensure(idKey(f.Name))
		}
		farms[f.Name] = compileFarm(f, marks, opts.MarkMask, true)
	}
	return renderRuleset(opts, farms), nil
}

// Render returns the installed ruleset in nft syntax, as Render does.
func (b *Balancer) Render() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	farms := map[string]*compiledFarm{}
	for name, c := range b.farms {
		farms[name] = compileFarm(c.spec, b.marks.begin(), b.opts.MarkMask, true)
	}
	return renderRuleset(b.opts, farms)
}

func renderRuleset(o Options, farms map[string]*compiledFarm) string {
	var w strings.Builder
	p := func(indent int, format string, args ...any) {
		w.WriteString(strings.Repeat("\t", indent))
		fmt.Fprintf(&w, format, args...)
		w.WriteByte('\n')
	}
	p(0, "# l4nft ruleset: table inet %s, conntrack mark bits %s.", o.Table, markText(o.MarkMask))
	p(0, "# The seed design (Zevenet L4xNAT, iptables) used, per farm and per backend:")
	p(0, "#   mangle PREROUTING  CONNMARK --restore-mark; MARK by statistic random; CONNMARK --save-mark")
	p(0, "#   nat PREROUTING     DNAT by mark;  nat POSTROUTING  SNAT/MASQUERADE by mark (NAT mode)")
	p(0, "# Here farms and backends are elements of shared maps: a new connection takes")
	p(0, "# its farm's mark (one hash lookup), then a backend's mark by a weighted random")
	p(0, "# slot (one interval lookup); NAT reads the mark from conntrack.")
	p(0, "# `nft -f` of this file replaces table inet %s and touches nothing else.", o.Table)
	p(0, "table inet %s", o.Table)
	p(0, "delete table inet %s", o.Table)
	p(0, "table inet %s {", o.Table)
	for _, s := range tableSets {
		kind := "set"
		if s.Data.Name != "" {
			kind = "map"
		}
		p(1, "%s %s {", kind, s.Name)
		switch {
		case isSchedule(s.Name):
			p(2, "typeof ct mark . numgen random mod %d : ct mark", scheduleSlots)
		case s.Name == setPersistOK.Name || s.Name == setRejects.Name:
			p(2, "typeof ct mark . ct mark")
		case s.Name == setBackendConns.Name || s.Name == setBackendFull.Name:
			p(2, "typeof ct mark")
		case isList(s.Name) || strings.HasPrefix(s.Name, "client_"):
			p(2, "typeof ct mark . %s saddr", map[bool]string{true: "ip6", false: "ip"}[strings.HasSuffix(s.Name, "6")])
		case isConsistent(s.Name):
			p(2, "typeof ct mark . numgen random mod 1 : ct mark")
		case s.Dynamic:
			p(2, "typeof %s", persistTypeof(s.Name))
		case s.Data.Name != "":
			p(2, "type %s : %s", s.Key.Name, s.Data.Name)
		default:
			p(2, "type %s", s.Key.Name)
		}
		if s.Interval {
			p(2, "flags interval")
		}
		if s.Dynamic {
			flags := "dynamic"
			if s.Timeouts {
				flags += ",timeout"
			}
			p(2, "flags %s", flags)
			p(2, "size %d", s.Size)
		}
		if s.Counter {
			p(2, "counter")
		}
		var lines []string
		if s.Name == setSchema.Name {
			lines = append(lines, schemaElement(o).text)
		}
		if s.Name == setShards.Name {
			for _, e := range shardElements(o) {
				lines = append(lines, e.text)
			}
		}
		for _, name := range sortedKeys(farms) {
			var texts []string
			for _, e := range farms[name].elements[s.Name] {
				if e.text != "" {
					texts = append(texts, e.text)
				}
			}
			slices.Sort(texts)
			lines = append(lines, texts...)
		}
		if len(lines) > 0 {
			p(2, "elements = {")
			p(3, "%s", strings.Join(lines, ",\n\t\t\t"))
			p(2, "}")
		}
		p(1, "}")
	}
	chains := baseChains(o)
	helpersMade := map[string]bool{}
	for _, name := range sortedKeys(farms) {
		if c := farms[name].chain; c != nil {
			chains = append(chains, *c)
			for _, h := range c.helpers {
				if !helpersMade[h.Name] {
					helpersMade[h.Name] = true
					p(1, "ct helper %s {", h.Name)
					p(2, "type %q protocol %s", h.Helper, protoName(h.Proto))
					p(2, "l3proto inet")
					p(1, "}")
				}
			}
		}
	}
	for _, c := range chains {
		p(1, "chain %s {", c.Name)
		if c.hook != "" {
			p(2, "%s", c.hook)
		}
		for _, r := range c.rules {
			if r.seed != "" {
				p(2, "# replaces: %s", r.seed)
			}
			p(2, "%s comment %q", r.text, r.Comment)
		}
		p(1, "}")
	}
	p(0, "}")
	return w.String()
}

// persistTypeof declares a persistence map's key and data as nft
// expressions, the lasting farm id standing in as a ct mark.
func persistTypeof(set string) string {
	for _, fam := range []nft.Family{nft.IPv4, nft.IPv6} {
		for by := range PersistBy(len(persistBys.names)) {
			if persistSetName(fam, by) == set {
				return fmt.Sprintf("ct mark . %s : ct mark", strings.ReplaceAll(fieldsText(fam, by.fields()), "th sport", "tcp sport"))
			}
		}
	}
	return "?"
}
