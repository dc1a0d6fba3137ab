package nft

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Field is a packet field that a hash or a persistence key reads.
type Field uint8

// Fields.
const (
	SrcIP Field = iota + 1
	SrcPort
	DstIP
	DstPort
)

// load loads the field of a family's packet into the 4-byte register at
// reg32(at); it returns the expression and how many registers it fills.
// A port fills 2 bytes of its register and the kernel zeroes the rest, so
// a key or a hash over it is stable.
func (fl Field) load(f Family, at int) (expr.Any, int) {
	words := f.addrLen() / 4
	switch fl {
	case SrcIP:
		off := uint32(12)
		if f == IPv6 {
			off = 8
		}
		return &expr.Payload{DestRegister: reg32(at), Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(f.addrLen())}, words
	case DstIP:
		off := uint32(16)
		if f == IPv6 {
			off = 24
		}
		return &expr.Payload{DestRegister: reg32(at), Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(f.addrLen())}, words
	case SrcPort:
		return &expr.Payload{DestRegister: reg32(at), Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}, 1
	default: // DstPort
		return &expr.Payload{DestRegister: reg32(at), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, 1
	}
}

// loadFields loads fields into consecutive 4-byte registers from
// reg32(at), each padded to 4 bytes, and returns the key's length in bytes.
func loadFields(f Family, fields []Field, at int) ([]expr.Any, uint32) {
	var out []expr.Any
	n := 0
	for _, fl := range fields {
		e, words := fl.load(f, at+n)
		out = append(out, e)
		n += words
	}
	return out, uint32(4 * n)
}

// The register that holds a drawn slot; the mark it is concatenated with
// goes in reg32(0), so that the two form the 8-byte key of a schedule map.
const slotReg = 1

// RandomSlot draws a slot in [0, modulus) at random (numgen random).
func RandomSlot(modulus uint32) []expr.Any {
	return []expr.Any{&expr.Numgen{Register: reg32(slotReg), Modulus: modulus, Type: unix.NFT_NG_RANDOM}}
}

// CounterSlot draws the slots [0, modulus) in turn (numgen inc): the
// expression's own counter, so each rule that holds it counts alone.
func CounterSlot(modulus uint32) []expr.Any {
	return []expr.Any{&expr.Numgen{Register: reg32(slotReg), Modulus: modulus, Type: unix.NFT_NG_INCREMENTAL}}
}

// SymHashSlot draws the slot as a hash of the flow that is the same in
// both directions (symhash mod modulus).
func SymHashSlot(modulus uint32) []expr.Any {
	return []expr.Any{&expr.Hash{DestRegister: reg32(slotReg), Modulus: modulus, Type: expr.HashTypeSym}}
}

// HashSlot draws the slot as a Jenkins hash of the packet's fields with
// seed (jhash f1 . f2 mod modulus seed seed). google/nftables leaves a seed
// of 0 out of the message, which makes the kernel pick a random one: a
// fixed non-zero seed keeps the choice the same on every node.
func HashSlot(f Family, fields []Field, modulus, seed uint32) []expr.Any {
	out, n := loadFields(f, fields, 2)
	return append(out, &expr.Hash{SourceRegister: reg32(2), DestRegister: reg32(slotReg), Length: n, Modulus: modulus, Seed: seed, Type: expr.HashTypeJenkins})
}

// ChooseBySlot sets the connection's mark to what schedule map set holds
// for the current mark . slot, the slot drawn by slot (RandomSlot,
// CounterSlot, SymHashSlot or HashSlot): ct mark set ct mark . SLOT map
// @set. Both key parts are made big-endian so that the interval map's
// byte-wise comparison orders them as numbers.
func ChooseBySlot(set string, slot []expr.Any) []expr.Any {
	out := append([]expr.Any{}, slot...)
	return append(out,
		&expr.Byteorder{SourceRegister: reg32(slotReg), DestRegister: reg32(slotReg), Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: reg1},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true})
}

// ChooseFromTable sets the connection's mark to what hash map table holds
// for id . slot, the slot drawn by slot, both in host order (PairKey):
// ct mark set ID . SLOT map @table.
func ChooseFromTable(table string, id uint32, slot []expr.Any) []expr.Any {
	out := slices.Concat(slot, Constant(0, id))
	return append(out,
		&expr.Lookup{SourceRegister: reg1, SetName: table, IsDestRegSet: true, DestRegister: reg1},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true})
}

// dynsetDelete is NFT_DYNSET_OP_DELETE (Linux 5.19), missing from x/sys.
const dynsetDelete = 2

// PersistKey is the key of a persistence map: a farm's id . fields.
type PersistKey struct {
	Family Family
	ID     uint32
	Fields []Field
}

// Constant loads the 4-byte value v (host order, as marks are) into
// reg32(at) as ct mark & 0 ^ v rather than as an immediate: nft can write
// and read that back in a concatenation (ct mark & 0x0 | v . ip saddr),
// where it cannot parse a bare constant.
func Constant(at int, v uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg32(at), Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: reg32(at), DestRegister: reg32(at), Len: 4, Mask: Mark(0), Xor: Mark(v)},
	}
}

// load loads the key from reg32(2) and returns its length in bytes.
func (k PersistKey) load() ([]expr.Any, uint32) {
	out := Constant(2, k.ID)
	fields, n := loadFields(k.Family, k.Fields, 3)
	return append(out, fields...), n + 4
}

// Len is the key's length in bytes: the size of the map's key.
func (k PersistKey) Len() int {
	_, n := k.load()
	return int(n)
}

// Persistence takes three rules before the choice, because nft (1.0.6)
// cannot list a rule that looks up a key built from another lookup's
// result:
//
//	RestorePersisted: ct mark set KEY map @persist
//	ForgetPersisted:  ct mark != FARM FARM . ct mark != @ok delete @persist { KEY } ct mark set FARM
//	KeepPersisted:    ct mark != FARM update @persist { KEY timeout TTL : ct mark }
//
// The first gives a new connection the backend the map remembers for its
// key, if any; the second forgets an entry whose backend no longer takes
// connections (the pair farm . backend is not in set ok) and puts the farm
// mark back; the third refreshes an entry that stays. The choice that
// follows runs only while the mark is still the farm's (MatchCtMarkIs),
// and RememberChoice records it.

// RestorePersisted sets the connection's mark to what map persist holds
// for the key: ct mark set KEY map @persist.
func RestorePersisted(k PersistKey, persist string) []expr.Any {
	out, _ := k.load()
	return append(out,
		&expr.Lookup{SourceRegister: reg32(2), SetName: persist, IsDestRegSet: true, DestRegister: reg32(1)},
		&expr.Ct{Register: reg32(1), Key: expr.CtKeyMARK, SourceRegister: true})
}

// ForgetPersisted matches a connection whose mark is no longer the
// farm's but whose pair farm . ct mark is not in set ok, deletes the key's
// entry from map persist and sets the mark back to the farm's.
func ForgetPersisted(k PersistKey, persist, ok string, farm uint32) []expr.Any {
	out := slices.Concat(matchCtMarkNot(farm), Constant(0, farm), []expr.Any{
		&expr.Ct{Register: reg32(1), Key: expr.CtKeyMARK},
		&expr.Lookup{SourceRegister: reg32(0), SetName: ok, Invert: true},
	})
	key, _ := k.load()
	// The kernel wants a data register for any operation on a map; the
	// mark in reg32(1) serves.
	return append(append(out, key...),
		&expr.Dynset{SrcRegKey: reg32(2), SrcRegData: reg32(1), SetName: persist, Operation: dynsetDelete},
		&expr.Immediate{Register: reg32(1), Data: Mark(farm)},
		&expr.Ct{Register: reg32(1), Key: expr.CtKeyMARK, SourceRegister: true})
}

// KeepPersisted refreshes the key's entry in map persist for a connection
// whose mark is no longer the farm's: the backend persistence gave it.
func KeepPersisted(k PersistKey, persist string, farm uint32, ttl time.Duration) []expr.Any {
	out := append(matchCtMarkNot(farm), &expr.Ct{Register: reg32(1), Key: expr.CtKeyMARK})
	key, _ := k.load()
	return append(append(out, key...),
		&expr.Dynset{SrcRegKey: reg32(2), SrcRegData: reg32(1), SetName: persist, Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: ttl})
}

// SetCtMark sets the connection's whole mark to m: ct mark set M.
func SetCtMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: reg1, Data: Mark(m)},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// FlagMark adds the mark in NFT_REG_1 to set for ttl, following
// MarkOverConnections: add @set { ct mark timeout TTL }.
func FlagMark(set string, ttl time.Duration) []expr.Any {
	return []expr.Any{&expr.Dynset{SrcRegKey: reg1, SetName: set, Operation: unix.NFT_DYNSET_OP_ADD, Timeout: ttl}}
}

// matchCtMarkNot matches connections whose whole mark is not m.
func matchCtMarkNot(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: Mark(m)},
	}
}

// MarkOverConnections matches a connection whose whole mark is m when
// the mark has more than n connections tracked, this one included:
// ct mark m add @set { ct mark ct count over N }.
func MarkOverConnections(m uint32, set string, n uint32) []expr.Any {
	return append(MatchCtMark(m),
		&expr.Dynset{SrcRegKey: reg1, SetName: set, Operation: unix.NFT_DYNSET_OP_ADD,
			Exprs: []expr.Any{&expr.Connlimit{Count: n, Flags: connlimitOver}}})
}

// RememberChoice adds the connection's mark under the key to map persist,
// with ttl: appended to ChooseBySlot, it runs only when a backend was
// chosen. add @persist { KEY timeout TTL : ct mark }
func RememberChoice(k PersistKey, persist string, ttl time.Duration) []expr.Any {
	out, _ := k.load()
	return append(out,
		&expr.Ct{Register: reg32(1), Key: expr.CtKeyMARK},
		&expr.Dynset{SrcRegKey: reg32(2), SrcRegData: reg32(1), SetName: persist, Operation: unix.NFT_DYNSET_OP_ADD, Timeout: ttl})
}

// MatchCtMarkIs matches connections whose mark, masked, is m.
func MatchCtMarkIs(mask, m uint32) []expr.Any {
	return append(LoadCtMark(mask), &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: Mark(m)})
}

// PairKey is the key of a set of mark pairs (persist_ok, the Maglev
// tables, the rejection counters): both marks in host order, as the rules
// load them.
func PairKey(a, b uint32) []byte {
	return binary.NativeEndian.AppendUint32(Mark(a), b)
}
