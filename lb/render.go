package lb

import (
	"fmt"
	"strings"
)

// Render returns the ruleset Apply would install for s on a fresh table,
// in nft syntax, each rule commented with the iptables rule of the seed
// design it replaces. `nft -f` of the text installs an equivalent table
// (replacing one of the same name) and touches nothing else.
func Render(s State, opts Options) (string, error) {
	opts = opts.withDefaults()
	if err := opts.check(); err != nil {
		return "", err
	}
	if err := Validate(s, opts); err != nil {
		return "", err
	}
	fresh := &Balancer{opts: opts}
	marks, _ := fresh.allocateMarks(s)
	return renderRuleset(compile(s, opts, marks), opts), nil
}

// Render returns the installed ruleset in nft syntax, as Render does.
func (b *Balancer) Render() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return renderRuleset(compile(b.state, b.opts, b.marks), b.opts)
}

func renderRuleset(r ruleset, o Options) string {
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
	p(0, "# Here every farm and backend is an element of a shared map, walked by hash lookup,")
	p(0, "# and each farm has one chain holding the weighted random choice.")
	p(0, "# `nft -f` of this file replaces table inet %s and touches nothing else.", o.Table)
	p(0, "table inet %s", o.Table)
	p(0, "delete table inet %s", o.Table)
	p(0, "table inet %s {", o.Table)
	for _, name := range sortedKeys(r.farms) {
		renderChain(p, r.farms[name])
	}
	for _, s := range allSets {
		kind := "set"
		if s.Data.Name != "" {
			kind = "map"
		}
		p(1, "%s %s {", kind, s.Name)
		typ := "type " + s.Key.Name
		if s.Data.Name != "" {
			typ += " : " + s.Data.Name
		}
		p(2, "%s", typ)
		if s.Interval {
			p(2, "flags interval")
		}
		if s.Counter {
			p(2, "counter")
		}
		es := r.elements[s.Name]
		if len(es) > 0 {
			lines := make([]string, 0, len(es))
			for _, id := range sortedKeys(es) {
				lines = append(lines, es[id].text)
			}
			p(2, "elements = {")
			p(3, "%s", strings.Join(lines, ",\n\t\t\t"))
			p(2, "}")
		}
		p(1, "}")
	}
	for _, c := range r.base {
		renderChain(p, c)
	}
	p(0, "}")
	return w.String()
}

func renderChain(p func(int, string, ...any), c chain) {
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
