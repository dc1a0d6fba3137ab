package main

import (
	"fmt"
	"strings"
)

// The seed design (the Zevenet article in the issue) as iptables-restore
// input, for NAT-mode farms:
//
//	*mangle
//	-A PREROUTING -j CONNMARK --restore-mark
//	-A PREROUTING -d VIP/32 -p tcp -m statistic --mode random --probability P_n ... -j MARK --set-mark M_n
//	...                                                       (backends n down to 1)
//	-A PREROUTING -d VIP/32 -p tcp -m statistic --mode random --probability P_1 ... -j MARK --set-mark M_1
//	-A PREROUTING -m state --state NEW -j CONNMARK --save-mark
//	*nat
//	-A PREROUTING -p tcp -m mark --mark M_i ... -j DNAT --to-destination B_i:PORT
//	-A POSTROUTING -p tcp -m mark --mark M_i ... -j SNAT --to-source VIP
//
// MARK does not stop the walk, so of a farm's rules the LAST one that
// matches wins. The article lists backend 1 with probability 1 first and
// backend 0 with 0.5 after it; generalised, the rules come in the order
// n, n-1, ..., 1 and backend i's rule matches with probability
//
//	p_i = w_i / (w_i + w_{i+1} + ... + w_n)
//
// Backend i wins when its rule matches and none of the rules after it
// (backends 1..i-1) does: p_i * prod_{j<i} (1 - p_j). Since
// 1 - p_j = (w_{j+1} + ... + w_n) / (w_j + ... + w_n), the product
// telescopes to (w_i + ... + w_n) / W, and the share is w_i / W. The
// distribution measurement checks this with traffic.
//
// Every packet, not only a connection's first, walks the mangle rules: the
// article's MARK rules have no state match. Only a connection's first packet
// walks the nat chains.

// seedMarkBase is the first mark handed out (the article's marks are 0x20c
// and 0x20d).
const seedMarkBase = 0x200

// seedMark returns the packet mark of backend j of farm f, given the index
// of the farm's first backend among all backends.
func seedMark(first, j int) uint32 { return uint32(seedMarkBase + first + j) }

// seedProbabilities returns the statistic probability of each backend's
// rule (indexed like weights) for the cascade described above.
func seedProbabilities(weights []int) []float64 {
	p := make([]float64, len(weights))
	rest := 0
	for i := len(weights) - 1; i >= 0; i-- {
		rest += weights[i]
		p[i] = float64(weights[i]) / float64(rest)
	}
	return p
}

// seedMarkRule is the mangle rule that marks backend j of f, without the
// leading "-A PREROUTING" (so that it serves -A and -R alike).
func seedMarkRule(f farm, first, j int, probability float64) string {
	return fmt.Sprintf("-d %s/32 -p tcp -m statistic --mode random --probability %.11f -m multiport --dports %d -m comment --comment \" FARM_%s_%d_ \" -j MARK --set-xmark %#x/0xffffffff",
		f.VIP, probability, f.Port, f.Name, j, seedMark(first, j))
}

// seedRules returns the iptables-restore input of the seed design for farms.
// Loaded without --noflush, it replaces the mangle and nat tables.
func seedRules(farms []farm) string {
	var b strings.Builder
	b.Grow(len(farms) * 600)
	b.WriteString("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	b.WriteString("-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n")
	first := 0
	for _, f := range farms {
		ws := weightsOf(f)
		p := seedProbabilities(ws)
		for j := len(f.Backends) - 1; j >= 0; j-- {
			b.WriteString("-A PREROUTING ")
			b.WriteString(seedMarkRule(f, first, j, p[j]))
			b.WriteByte('\n')
		}
		first += len(f.Backends)
	}
	b.WriteString("-A PREROUTING -m state --state NEW -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\nCOMMIT\n")

	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	first = 0
	for _, f := range farms {
		for j, be := range f.Backends {
			fmt.Fprintf(&b, "-A PREROUTING -p tcp -m mark --mark %#x -m comment --comment \" FARM_%s_%d_ \" -j DNAT --to-destination %s:%d\n",
				seedMark(first, j), f.Name, j, be.Addr, be.Port)
		}
		first += len(f.Backends)
	}
	first = 0
	for _, f := range farms {
		for j := range f.Backends {
			fmt.Fprintf(&b, "-A POSTROUTING -p tcp -m mark --mark %#x -m comment --comment \" FARM_%s_%d_ \" -j SNAT --to-source %s\n",
				seedMark(first, j), f.Name, j, f.VIP)
		}
		first += len(f.Backends)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// seedWeightChange returns the iptables-restore --noflush input that changes
// the weight of backend j of the last farm to w, as an operator of the seed
// design would: by replacing the one mangle rule whose probability changes.
// Backend 0 is the last rule of its farm, so only its own rule changes.
func seedWeightChange(farms []farm, j, w int) string {
	f := farms[len(farms)-1]
	first := totalBackends(farms) - len(f.Backends)
	// Rule 1 is the CONNMARK restore; each farm's rules follow in order,
	// its backends from last to first.
	num := 1 + first + (len(f.Backends) - j)
	ws := weightsOf(f)
	ws[j] = w
	p := seedProbabilities(ws)
	return fmt.Sprintf("*mangle\n-R PREROUTING %d %s\nCOMMIT\n", num, seedMarkRule(f, first, j, p[j]))
}

func weightsOf(f farm) []int {
	ws := make([]int, len(f.Backends))
	for i, b := range f.Backends {
		ws[i] = b.Weight
	}
	return ws
}
