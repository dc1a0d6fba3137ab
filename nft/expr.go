package nft

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Registers. NFT_REG_1 is a 16-byte register that overlaps the 4-byte
// registers NFT_REG32_00..03; a concatenated key is loaded into consecutive
// 4-byte registers starting there, each field padded to 4 bytes.
const (
	reg1     = unix.NFT_REG_1
	reg32At0 = unix.NFT_REG32_00
)

// reg32 returns the 4-byte register i words after the start of NFT_REG_1.
func reg32(i int) uint32 { return uint32(reg32At0 + i) }

// Family is the IP family of an expression that depends on it.
type Family uint8

// Families.
const (
	IPv4 Family = unix.NFPROTO_IPV4
	IPv6 Family = unix.NFPROTO_IPV6
)

// FamilyOf returns the family of addr.
func FamilyOf(addr netip.Addr) Family {
	if addr.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// addrLen is the size of an address of the family, in bytes.
func (f Family) addrLen() int {
	if f == IPv4 {
		return 4
	}
	return 16
}

func (f Family) String() string {
	if f == IPv4 {
		return "ip"
	}
	return "ip6"
}

// Mark returns the bytes of a mark as the kernel holds it (host order).
func Mark(m uint32) []byte { return binaryutil.NativeEndian.PutUint32(m) }

// ParseMark is the inverse of Mark.
func ParseMark(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binaryutil.NativeEndian.Uint32(b[:4])
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// MatchFamily matches packets of family f (meta nfproto).
func MatchFamily(f Family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(f)}},
	}
}

// MatchCtStateNew matches the first packets of a connection (ct state new).
func MatchCtStateNew() []expr.Any { return matchCtState(expr.CtStateBitNEW) }

// MatchCtStateInvalid matches packets conntrack could not place (ct state
// invalid).
func MatchCtStateInvalid() []expr.Any { return matchCtState(expr.CtStateBitINVALID) }

func matchCtState(bit uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: Mark(bit), Xor: Mark(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: Mark(0)},
	}
}

// LoadCtMark loads ct mark & mask into NFT_REG_1: the CONNMARK
// --restore-mark of the seed design, except that it goes to a register
// rather than the packet mark, so the packet mark (shared with other
// programs) is never written.
func LoadCtMark(mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: Mark(mask), Xor: Mark(0)},
	}
}

// MatchCtMark matches connections whose whole mark is m (ct mark == m).
func MatchCtMark(m uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: Mark(m)},
	}
}

// JumpByMark jumps to the chain that verdict map vmap holds for the
// connection's mark, masked: ct mark & mask vmap @vmap.
func JumpByMark(mask uint32, vmap string) []expr.Any {
	return append(LoadCtMark(mask), &expr.Lookup{SourceRegister: reg1, SetName: vmap, IsDestRegSet: true, DestRegister: 0})
}

// MatchCtMarkIn matches connections whose mark, masked, is in set:
// ct mark & mask @set.
func MatchCtMarkIn(mask uint32, set string) []expr.Any {
	return append(LoadCtMark(mask), &expr.Lookup{SourceRegister: reg1, SetName: set})
}

// SetCtMarkFromService sets the connection's mark to what map set holds
// for the packet's destination address . protocol . port:
// ct mark set ip daddr . meta l4proto . th dport map @set.
func SetCtMarkFromService(f Family, set string) []expr.Any {
	exprs := loadService(f)
	return append(exprs,
		&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: reg1},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true})
}

// SetCtMarkFromAddress sets the connection's mark to what map set holds
// for the packet's destination address alone, whatever its protocol and
// port: ct mark set ip daddr map @set. The map's key is the family's
// address, as ServiceKey's first field.
func SetCtMarkFromAddress(f Family, set string) []expr.Any {
	return []expr.Any{
		loadDaddr(f),
		&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: reg1},
		&expr.Ct{Register: reg1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
}

// ScheduleKey returns the key of a ScheduleSet element: mark . slot, both
// big-endian, as SetCtMarkFromSchedule builds it.
func ScheduleKey(mark, slot uint32) []byte {
	return binary.BigEndian.AppendUint32(be32(mark), slot)
}

// MatchL4Proto matches one transport protocol (meta l4proto).
func MatchL4Proto(proto uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// ServiceKey returns the key of a service in a ServiceSet of the
// family: address . protocol . port, each padded to 4 bytes.
func ServiceKey(addr netip.Addr, proto uint8, port uint16) []byte {
	a := addr.Unmap().AsSlice()
	k := make([]byte, len(a)+8)
	copy(k, a)
	k[len(a)] = proto
	binary.BigEndian.PutUint16(k[len(a)+4:], port)
	return k
}

// loadService loads ip daddr . meta l4proto . th dport into consecutive
// registers from NFT_REG_1, the layout of ServiceKey.
//
// th dport is the 2 bytes at offset 2 of the transport header: the
// destination port of TCP, UDP and SCTP alike.
func loadService(f Family) []expr.Any {
	n := f.addrLen() / 4
	return []expr.Any{
		loadDaddr(f),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(n)},
		&expr.Payload{DestRegister: reg32(n + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// loadDaddr loads the destination address (ip daddr or ip6 daddr) into
// NFT_REG_1.
func loadDaddr(f Family) expr.Any {
	offset := uint32(16) // in the IPv4 header
	if f == IPv6 {
		offset = 24
	}
	return &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(f.addrLen())}
}

// CountByMark updates the counter of the element of set that matches
// ct mark & mask, and matches if there is one: ct mark & mask @set.
func CountByMark(mask uint32, set string) []expr.Any {
	return append(LoadCtMark(mask), &expr.Lookup{SourceRegister: reg1, SetName: set})
}

// DNATByMark rewrites the destination to the address (and port, if
// withPort) that map set holds for ct mark & mask:
// dnat ip to ct mark & mask map @set. The map's data is
// family_addr . inet_service with a port, family_addr without.
func DNATByMark(f Family, mask uint32, set string, withPort bool) []expr.Any {
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f), RegAddrMin: reg1}
	if withPort {
		// The port follows the address: NFT_REG32_01 after an IPv4
		// address, NFT_REG_2 (NFT_REG32_04) after an IPv6 one. Any other
		// register is accepted by the kernel and breaks every connection.
		nat.RegProtoMin = reg32(f.addrLen() / 4)
		if f == IPv6 {
			nat.RegProtoMin = unix.NFT_REG_2
		}
		nat.Specified = true
	}
	return append(LoadCtMark(mask),
		&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: reg1},
		nat)
}

// SNATByMark rewrites the source to the address that map set holds for
// ct mark & mask: snat ip to ct mark & mask map @set.
func SNATByMark(f Family, mask uint32, set string) []expr.Any {
	return append(LoadCtMark(mask),
		&expr.Lookup{SourceRegister: reg1, SetName: set, IsDestRegSet: true, DestRegister: reg1},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(f), RegAddrMin: reg1})
}

// MasqueradeByMark masquerades connections whose ct mark & mask is in
// set: ct mark & mask @set masquerade.
func MasqueradeByMark(mask uint32, set string) []expr.Any {
	return append(LoadCtMark(mask),
		&expr.Lookup{SourceRegister: reg1, SetName: set},
		&expr.Masq{})
}

// Jump evaluates chain and comes back.
func Jump(chain string) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

// RejectTCPReset answers a TCP packet with a reset.
func RejectTCPReset() expr.Any { return &expr.Reject{Type: unix.NFT_REJECT_TCP_RST} }

// RejectUnreachable answers with ICMP (or ICMPv6) port unreachable.
func RejectUnreachable() expr.Any {
	return &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH}
}
