package nft

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

func TestSetCtMarkKeepsForeignBits(t *testing.T) {
	// ct mark set ct mark & 0x0000ffff | 0x00020000
	got := SetCtMark(0xffff0000, 0x00020000)
	want := []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: Mark(0x0000ffff), Xor: Mark(0x00020000)},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("SetCtMark() mismatch (-want +got):\n%s", diff)
	}
	// Evaluate the bitwise step as the kernel does on a mark with foreign bits.
	bw := got[1].(*expr.Bitwise)
	foreign := uint32(0x0000beef)
	reg := Mark(foreign)
	for i := range reg {
		reg[i] = reg[i]&bw.Mask[i] ^ bw.Xor[i]
	}
	if m := ParseMark(reg); m != 0x0002beef {
		t.Errorf("mark after set = %#x, want 0x0002beef", m)
	}
}

func TestRandomBelowComparesBigEndian(t *testing.T) {
	got := RandomBelow(3, 1)
	if len(got) != 3 {
		t.Fatalf("got %d expressions, want numgen, byteorder, cmp", len(got))
	}
	ng := got[0].(*expr.Numgen)
	if ng.Modulus != 3 || ng.Type != unix.NFT_NG_RANDOM {
		t.Errorf("numgen = %+v, want random mod 3", ng)
	}
	if bo := got[1].(*expr.Byteorder); bo.Op != expr.ByteorderHton || bo.Len != 4 || bo.Size != 4 {
		t.Errorf("byteorder = %+v, want hton len 4 size 4", bo)
	}
	c := got[2].(*expr.Cmp)
	if c.Op != expr.CmpOpLt || !bytes.Equal(c.Data, []byte{0, 0, 0, 1}) {
		t.Errorf("cmp = %+v, want lt 00000001", c)
	}
}

func TestDNATByMarkRegisters(t *testing.T) {
	tests := []struct {
		fam       Family
		withPort  bool
		wantProto uint32
	}{
		{IPv4, true, unix.NFT_REG32_01},
		{IPv6, true, unix.NFT_REG_2},
		{IPv4, false, 0},
		{IPv6, false, 0},
	}
	for _, tt := range tests {
		exprs := DNATByMark(tt.fam, 0xffff0000, "m", tt.withPort)
		nat := exprs[len(exprs)-1].(*expr.NAT)
		if nat.RegAddrMin != unix.NFT_REG_1 || nat.RegProtoMin != tt.wantProto || nat.Specified != tt.withPort {
			t.Errorf("%v withPort=%v: nat = %+v, want addr reg 1, proto reg %d", tt.fam, tt.withPort, nat, tt.wantProto)
		}
		if nat.Family != uint32(tt.fam) || nat.Type != expr.NATTypeDestNAT {
			t.Errorf("%v: nat family/type = %d/%d", tt.fam, nat.Family, nat.Type)
		}
		lookup := exprs[len(exprs)-2].(*expr.Lookup)
		if !lookup.IsDestRegSet || lookup.DestRegister != unix.NFT_REG_1 || lookup.SetName != "m" {
			t.Errorf("%v: lookup = %+v", tt.fam, lookup)
		}
	}
}

func TestServiceKeyLayout(t *testing.T) {
	got := ServiceKey(netip.MustParseAddr("198.51.100.250"), 6, 8080)
	want := []byte{198, 51, 100, 250, 6, 0, 0, 0, 0x1f, 0x90, 0, 0}
	if !bytes.Equal(got, want) {
		t.Errorf("ServiceKey v4 = %x, want %x", got, want)
	}
	if k := ServiceKey(netip.MustParseAddr("2001:db8::1"), 17, 53); len(k) != 24 || k[16] != 17 || binary.BigEndian.Uint16(k[20:]) != 53 {
		t.Errorf("ServiceKey v6 = %x", k)
	}
	// A v4-mapped address is an IPv4 key.
	if k := ServiceKey(netip.MustParseAddr("::ffff:198.51.100.250"), 6, 1); len(k) != 12 {
		t.Errorf("ServiceKey of a mapped address has %d bytes, want 12", len(k))
	}
}

func TestDispatchServiceRegisters(t *testing.T) {
	for _, tt := range []struct {
		fam                Family
		proto, port, daddr uint32
	}{
		{IPv4, unix.NFT_REG32_01, unix.NFT_REG32_02, 16},
		{IPv6, unix.NFT_REG32_04, unix.NFT_REG32_05, 24},
	} {
		e := DispatchService(tt.fam, "s")
		if p := e[0].(*expr.Payload); p.Offset != tt.daddr || p.DestRegister != unix.NFT_REG_1 {
			t.Errorf("%v: daddr load = %+v", tt.fam, p)
		}
		if m := e[1].(*expr.Meta); m.Register != tt.proto {
			t.Errorf("%v: l4proto in reg %d, want %d", tt.fam, m.Register, tt.proto)
		}
		if p := e[2].(*expr.Payload); p.DestRegister != tt.port || p.Base != expr.PayloadBaseTransportHeader || p.Offset != 2 {
			t.Errorf("%v: dport load = %+v", tt.fam, p)
		}
	}
}
