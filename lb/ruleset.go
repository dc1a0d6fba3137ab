package lb

import (
	"github.com/l4nft/l4nft/nft"
)

// rule is one rule as l4nft builds it: the expressions sent to the kernel
// and the same rule in nft syntax. The text is the rule's identity when
// comparing rulesets and what Render prints.
type rule struct {
	nft.Rule
	text string
	// seed is the iptables rule of the seed design this rule replaces.
	seed string
}

// chain is a chain with its rules. hook is the nft syntax of a base
// chain's hook line; empty for a farm chain.
type chain struct {
	nft.Chain
	hook  string
	rules []rule
}

// sameRules reports whether two chains hold the same rules.
func (c chain) sameRules(o chain) bool {
	if len(c.rules) != len(o.rules) {
		return false
	}
	for i := range c.rules {
		if c.rules[i].text != o.rules[i].text || c.rules[i].Comment != o.rules[i].Comment {
			return false
		}
	}
	return true
}

// element is a set element and, for Render, its nft syntax.
type element struct {
	nft.Element
	text string
}

// elementID identifies an element within its set: its key.
func elementID(e nft.Element) string { return string(e.Key) + "\x00" + string(e.KeyEnd) }

// sameElement reports whether two elements with the same key are the same.
func sameElement(a, b nft.Element) bool {
	return string(a.Value) == string(b.Value) && a.Jump == b.Jump && a.Comment == b.Comment
}

// ruleset is everything l4nft puts in its table.
type ruleset struct {
	// base are the hooked chains, fixed by the options.
	base []chain
	// farms are the farm chains by chain name.
	farms map[string]chain
	// elements are the elements of each set by set name, then elementID.
	elements map[string]map[string]element
}

func newRuleset() ruleset {
	r := ruleset{farms: map[string]chain{}, elements: map[string]map[string]element{}}
	for _, s := range allSets {
		r.elements[s.Name] = map[string]element{}
	}
	return r
}

func (r ruleset) add(s nft.Set, e element) {
	r.elements[s.Name][elementID(e.Element)] = e
}

// size counts the elements and farm chain rules, for logs.
func (r ruleset) size() (elements, farmRules int) {
	for _, es := range r.elements {
		elements += len(es)
	}
	for _, c := range r.farms {
		farmRules += len(c.rules)
	}
	return elements, farmRules
}
