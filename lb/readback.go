package lb

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/l4nft/l4nft/nft"
)

// readKernel learns what the kernel holds: the elements of every set and,
// from the elements' comments and values, the State and the marks. It
// only reads. A table that is missing, of another layout, or unreadable is
// left alone until the next Apply replaces it.
func (b *Balancer) readKernel(ctx context.Context) error {
	b.reset()
	table := b.opts.Table
	exists, err := b.conn.TableExists(table)
	if err != nil || !exists {
		return err
	}
	if ok, err := b.sameLayout(); err != nil || !ok {
		if err == nil {
			b.opts.Logger.Warn("table has another layout or options; the next apply replaces it", "table", table)
		}
		return err
	}
	kernel := map[string][]nft.Element{}
	for _, s := range allSets {
		if err := ctx.Err(); err != nil {
			return err
		}
		if s.Name == setSchema.Name || s.Name == setShards.Name {
			continue
		}
		if kernel[s.Name], err = b.conn.Elements(table, s); err != nil {
			return fmt.Errorf("adopting table %s: %w", table, err)
		}
	}
	chains, err := b.conn.Chains(table)
	if err != nil {
		return fmt.Errorf("adopting table %s: %w", table, err)
	}
	a, err := adopt(kernel, chains, b.opts.MarkMask)
	if err != nil {
		b.opts.Logger.Warn("table's contents cannot be read back; the next apply replaces it", "table", table, "err", err)
		return nil
	}
	b.farms, b.order, b.orphans, b.orphanChains, b.rebuild = a.farms, a.order, a.orphans, a.orphanChains, false
	for k, m := range a.marks {
		b.marks.owner[k], b.marks.used[m] = m, k
	}
	for _, c := range b.farms {
		b.services.add(c.spec)
	}
	// Marks that elements hold but no farm claims stay reserved until
	// the next Apply deletes those elements: never handed to a new object.
	for set, es := range a.orphans {
		for _, e := range es {
			m := nft.ParseMark(e.Key)
			if isSchedule(set) {
				m = scheduleFarm(e.Key)
			}
			if _, ok := b.marks.used[m]; !ok && len(e.Key) >= 4 {
				b.marks.used[m] = objectKey{backend: markText(m)}
			}
		}
	}
	if b.gen, err = b.conn.Generation(); err != nil {
		b.gen = 0
	}
	return nil
}

// sameLayout reports whether the table was built by this version with
// these options: the schema comment and the sets' kinds match. (nft -f of
// Render's text makes the schedule a concatenation, which loads the same
// ruleset into another kind of set.)
func (b *Balancer) sameLayout() (bool, error) {
	schema, err := b.conn.Elements(b.opts.Table, setSchema)
	if err != nil || len(schema) != 1 || schema[0].Comment != schemaComment(b.opts) {
		return false, nil
	}
	sets, err := b.conn.Sets(b.opts.Table)
	if err != nil {
		return false, err
	}
	kinds := map[string]nft.Set{}
	for _, s := range sets {
		kinds[s.Name] = s
	}
	for _, want := range tableSets {
		have, ok := kinds[want.Name]
		// (google/nftables v0.3.0 does not read the counter flag back.)
		if !ok || have.Interval != want.Interval || have.Concat != want.Concat {
			return false, nil
		}
	}
	// Every chain, with its rules in order: a flushed chain or a deleted
	// rule refuses connections however right the maps are. Rules are
	// compared by their comments, which is what reads back reliably.
	chains, err := b.conn.Chains(b.opts.Table)
	if err != nil {
		return false, err
	}
	want := baseChains(b.opts)
	// Farm chains are the farms', checked by adopt.
	chains = slices.DeleteFunc(chains, func(name string) bool { return strings.HasPrefix(name, farmChainPrefix) })
	if len(chains) != len(want) {
		return false, nil
	}
	for _, c := range want {
		rules, err := b.conn.Rules(b.opts.Table, c.Name)
		if err != nil || len(rules) != len(c.rules) {
			return false, nil
		}
		for i, r := range rules {
			if r.Comment != c.rules[i].Comment {
				return false, nil
			}
		}
	}
	shards, err := b.conn.Elements(b.opts.Table, setShards)
	if n, _ := b.opts.shards(); err != nil || len(shards) != n {
		return false, nil
	}
	return true, nil
}

// adopted is what adopt makes of a table's elements.
type adopted struct {
	farms   map[string]*compiledFarm
	order   []string
	marks   map[objectKey]uint32
	orphans elements
	// orphanChains are the farm chains no farm claims.
	orphanChains []string
}

// adopt rebuilds farms and marks from the sets' elements. Each farm's
// elements are kept as the kernel has them; a farm whose elements differ
// from what its spec compiles to is marked dirty.
func adopt(kernel map[string][]nft.Element, chains []string, mask uint32) (adopted, error) {
	a := adopted{farms: map[string]*compiledFarm{}, marks: map[objectKey]uint32{}, orphans: elements{}}
	owner := map[uint32]objectKey{}
	specs := map[string]*Farm{}
	protos := map[string]protoBits{}
	// A farm has one record, unless a change was cut short between its
	// first and last transactions: then the record the services point to
	// is the farm, and the other one's elements are orphans. A record no
	// service points to is still the farm if it is the only one (its
	// services were deleted behind our back): adopting it keeps its
	// backends' marks, which live connections carry.
	referenced := map[uint32]bool{}
	for _, set := range serviceSets {
		for _, e := range kernel[set.Name] {
			referenced[nft.ParseMark(e.Value)] = true
		}
	}
	records := map[string][]nft.Element{}
	for _, e := range kernel[setFarms.Name] {
		name := parseComment(e.Comment)["farm"]
		records[name] = append(records[name], e)
	}
	byMark := map[uint32]*Farm{}
	for _, name := range sortedKeys(records) {
		rs := records[name]
		e := rs[0]
		for _, r := range rs {
			if referenced[nft.ParseMark(r.Key)] {
				e = r
				break
			}
		}
		kv := parseComment(e.Comment)
		f := &Farm{Name: name}
		if err := f.parseComment(kv); err != nil {
			return a, err
		}
		id := nft.ParseMark(e.Key)
		specs[f.Name], byMark[id] = f, f
		a.marks[objectKey{f.Name, ""}] = id
		owner[id] = objectKey{f.Name, ""}
		if v, ok := kv["id"]; ok {
			lasting, err := strconv.ParseUint(strings.TrimPrefix(v, "0x"), 16, 32)
			if err != nil {
				return a, fmt.Errorf("farm %q: id: %w", name, err)
			}
			a.marks[idKey(name)], owner[uint32(lasting)] = uint32(lasting), idKey(name)
		}
	}
	for _, set := range serviceSets {
		for _, e := range kernel[set.Name] {
			f := byMark[nft.ParseMark(e.Value)]
			if f == nil || parseComment(e.Comment)["farm"] != f.Name {
				continue // an orphan
			}
			name := f.Name
			if set.Name == setServicesAddr4.Name || set.Name == setServicesAddr6.Name {
				addr, ok := netip.AddrFromSlice(e.Key)
				if !ok {
					return a, fmt.Errorf("farm %q: address key of %d bytes", name, len(e.Key))
				}
				f.Address = addr
				protos[name] |= everyProtocol
				continue
			}
			addr, proto, first, err := parseServiceKey(e.Key)
			if err != nil {
				return a, fmt.Errorf("farm %q: %w", name, err)
			}
			last := first
			if len(e.KeyEnd) > 0 {
				if _, _, last, err = parseServiceKey(e.KeyEnd); err != nil {
					return a, fmt.Errorf("farm %q: %w", name, err)
				}
			}
			f.Address = addr
			protos[name] |= protoBit(proto)
			if pr := (PortRange{first, last}); !slices.Contains(f.Ports, pr) {
				f.Ports = append(f.Ports, pr)
			}
		}
	}
	targets := map[uint32]nft.Element{}
	for _, set := range []nft.Set{setDNAT4, setDNATAddr4, setDNAT6, setDNATAddr6} {
		for _, e := range kernel[set.Name] {
			targets[nft.ParseMark(e.Key)] = e
		}
	}
	for _, e := range kernel[setBackends.Name] {
		kv := parseComment(e.Comment)
		farmName, name, _ := strings.Cut(kv["backend"], "/")
		f := specs[farmName]
		if f == nil {
			continue // an orphan: no service names its farm
		}
		m := nft.ParseMark(e.Key)
		be, err := parseBackend(name, kv, targets[m])
		if err != nil {
			return a, fmt.Errorf("backend %q: %w", kv["backend"], err)
		}
		f.Backends = append(f.Backends, be)
		k := objectKey{farmName, name}
		a.marks[k], owner[m] = m, k
	}
	for name, f := range specs {
		f.Protocol = protos[name].protocol()
		slices.SortFunc(f.Ports, func(x, y PortRange) int { return int(x.First) - int(y.First) })
		slices.SortFunc(f.Backends, func(x, y Backend) int { return strings.Compare(x.Name, y.Name) })
		a.farms[name] = &compiledFarm{spec: *f, elements: elements{}}
	}
	a.order = sortedKeys(specs)

	// Give every element to its farm, by key: a service's comment, a
	// schedule's farm mark, or a backend's mark. A list's end belongs to
	// the range it ends, whose start comes before it in key order (its own
	// key may be carried into the next id).
	for _, set := range allSets {
		if isList(set.Name) {
			sortElements(kernel[set.Name])
		}
		var last objectKey
		for _, e := range kernel[set.Name] {
			var k objectKey
			var ok bool
			switch {
			case isList(set.Name) && e.IntervalEnd:
				k, ok = last, last.farm != ""
			case isList(set.Name):
				k, ok = owner[nft.ParseMark(e.Key)]
				last = k
			case isService(set.Name):
				k, ok = owner[nft.ParseMark(e.Value)]
				ok = ok && parseComment(e.Comment)["farm"] == k.farm
			case isStrict(set.Name):
				k = objectKey{farm: parseComment(e.Comment)["farm"]}
				ok = k.farm != ""
			case isSchedule(set.Name):
				k, ok = owner[scheduleFarm(e.Key)]
			default:
				k, ok = owner[nft.ParseMark(e.Key)]
			}
			el := element{Element: e}
			if c := a.farms[k.farm]; ok && c != nil {
				c.add(set, el)
				continue
			}
			a.orphans[set.Name] = append(a.orphans[set.Name], el)
		}
	}
	inKernel := map[string]bool{}
	for _, name := range chains {
		if strings.HasPrefix(name, farmChainPrefix) {
			inKernel[name] = true
		}
	}
	for _, c := range a.farms {
		for _, set := range []nft.Set{setAllow4, setAllow6} {
			c.spec.Allow = append(c.spec.Allow, listPrefixes(c.elements[set.Name])...)
		}
		for _, set := range []nft.Set{setDeny4, setDeny6} {
			c.spec.Deny = append(c.spec.Deny, listPrefixes(c.elements[set.Name])...)
		}
		want := compileFarm(c.spec, markMap(a.marks), mask, false)
		c.dirty = !sameElements(c.elements, want.elements)
		if name := want.chainName(); name != "" {
			if inKernel[name] {
				c.chain = want.chain
				delete(inKernel, name)
			} else {
				c.dirty = true
			}
		}
	}
	a.orphanChains = sortedKeys(inKernel)
	return a, nil
}

func (f *Farm) parseComment(kv map[string]string) error {
	var err error
	if f.Mode, err = ParseMode(kv["mode"]); err != nil {
		return fmt.Errorf("farm %q: %w", f.Name, err)
	}
	if f.Scheduler, err = ParseScheduler(kv["scheduler"]); err != nil {
		return fmt.Errorf("farm %q: %w", f.Name, err)
	}
	if src, ok := kv["source"]; ok {
		if f.Source, err = netip.ParseAddr(src); err != nil {
			return fmt.Errorf("farm %q: source: %w", f.Name, err)
		}
	}
	if v, ok := kv["hash"]; ok {
		for _, name := range strings.Split(v, ",") {
			h, err := ParseHashField(name)
			if err != nil {
				return fmt.Errorf("farm %q: %w", f.Name, err)
			}
			f.HashFields = append(f.HashFields, h)
		}
	}
	if v, ok := kv["slots"]; ok {
		if f.Slots, err = strconv.Atoi(v); err != nil {
			return fmt.Errorf("farm %q: slots: %w", f.Name, err)
		}
	}
	if v, ok := kv["persist"]; ok {
		by, ttl, _ := strings.Cut(v, "/")
		p := &Persistence{}
		if p.By, err = ParsePersistBy(by); err != nil {
			return fmt.Errorf("farm %q: %w", f.Name, err)
		}
		if err := p.TTL.UnmarshalText([]byte(ttl)); err != nil {
			return fmt.Errorf("farm %q: persistence: %w", f.Name, err)
		}
		f.Persistence = p
	}
	if v, ok := kv["limits"]; ok {
		l := &Limits{}
		var action string
		if _, err := fmt.Sscanf(strings.ReplaceAll(v, "/", " "), "%d %d %d %d %s", &l.NewPerSecond, &l.Burst, &l.NewPerClientPerSecond, &l.EstablishedPerClient, &action); err != nil {
			return fmt.Errorf("farm %q: limits %q: %w", f.Name, v, err)
		}
		if l.Action, err = ParseLimitAction(action); err != nil {
			return fmt.Errorf("farm %q: %w", f.Name, err)
		}
		f.Limits = l
	}
	f.TCPStrict = kv["strict"] == "true"
	if v, ok := kv["helpers"]; ok {
		for _, name := range strings.Split(v, ",") {
			h, err := ParseHelper(name)
			if err != nil {
				return fmt.Errorf("farm %q: %w", f.Name, err)
			}
			f.Helpers = append(f.Helpers, h)
		}
	}
	return nil
}

func parseBackend(name string, kv map[string]string, target nft.Element) (Backend, error) {
	be := Backend{Name: name}
	var err error
	if be.Weight, err = strconv.Atoi(kv["weight"]); err != nil {
		return be, fmt.Errorf("weight: %w", err)
	}
	if be.State, err = ParseBackendState(kv["state"]); err != nil {
		return be, err
	}
	if p, ok := kv["priority"]; ok {
		if be.Priority, err = strconv.Atoi(p); err != nil {
			return be, fmt.Errorf("priority: %w", err)
		}
	}
	if p, ok := kv["max_connections"]; ok {
		if be.MaxConnections, err = strconv.Atoi(p); err != nil {
			return be, fmt.Errorf("max_connections: %w", err)
		}
	}
	v := target.Value
	switch len(v) {
	case 0:
		// The dnat element is missing (deleted behind our back): the
		// address is unknown, and the farm, read back dirty, gets the
		// element back at the next Apply.
	case 4, 16:
		be.Address, _ = netip.AddrFromSlice(v)
	case 8, 20:
		be.Address, _ = netip.AddrFromSlice(v[:len(v)-4])
		be.Port = binary.BigEndian.Uint16(v[len(v)-4:])
	default:
		return be, fmt.Errorf("dnat target of %d bytes", len(v))
	}
	return be, nil
}

// protoBits are the kinds of service a farm's elements were read back
// from: a bit per IP protocol of its ports, and everyProtocol for its
// address alone.
type protoBits uint8

const everyProtocol protoBits = 1 << 7

func protoBit(p uint8) protoBits {
	switch p {
	case protoTCP:
		return 1
	case protoUDP:
		return 2
	case protoSCTP:
		return 4
	}
	return 8 // none of ours: matches no Protocol
}

// bits returns the kinds of service p's elements are.
func (p Protocol) bits() protoBits {
	if p == AllProtocols {
		return everyProtocol
	}
	var b protoBits
	for _, n := range p.numbers() {
		b |= protoBit(n)
	}
	return b
}

// protocol returns the Protocol whose services are of these kinds. Kinds
// no Protocol makes (services deleted or added behind our back) give TCP,
// and the farm, whose elements then differ from what it compiles to, is
// read back dirty and repaired by the next Apply.
func (b protoBits) protocol() Protocol {
	for p := range Protocol(len(protocols.names)) {
		if p.bits() == b {
			return p
		}
	}
	return TCP
}

// parseComment splits "k=v k=v" comments.
func parseComment(c string) map[string]string {
	kv := map[string]string{}
	for _, f := range strings.Fields(c) {
		k, v, _ := strings.Cut(f, "=")
		kv[k] = v
	}
	return kv
}

// parseServiceKey is the inverse of nft.ServiceKey.
func parseServiceKey(k []byte) (netip.Addr, uint8, uint16, error) {
	if len(k) != 12 && len(k) != 24 {
		return netip.Addr{}, 0, 0, fmt.Errorf("service key of %d bytes", len(k))
	}
	n := len(k) - 8
	addr, _ := netip.AddrFromSlice(k[:n])
	return addr, k[n], binary.BigEndian.Uint16(k[n+4:]), nil
}
