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

func TestChooseBySlotBuildsBigEndianKey(t *testing.T) {
	got := ChooseBySlot("sched", RandomSlot(1<<24))
	want := []expr.Any{
		&expr.Numgen{Register: unix.NFT_REG32_01, Modulus: 1 << 24, Type: unix.NFT_NG_RANDOM},
		&expr.Byteorder{SourceRegister: unix.NFT_REG32_01, DestRegister: unix.NFT_REG32_01, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: 1, SetName: "sched", IsDestRegSet: true, DestRegister: 1},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ChooseBySlot() mismatch (-want +got):\n%s", diff)
	}
	if k := ScheduleKey(0x00050000, 258); !bytes.Equal(k, []byte{0, 5, 0, 0, 0, 0, 1, 2}) {
		t.Errorf("ScheduleKey = %x", k)
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
		e := SetCtMarkFromService(tt.fam, "s")
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

func TestDispatchAddressRegisters(t *testing.T) {
	for _, tt := range []struct {
		fam          Family
		daddr, bytes uint32
	}{
		{IPv4, 16, 4},
		{IPv6, 24, 16},
	} {
		e := SetCtMarkFromAddress(tt.fam, "s")
		if p := e[0].(*expr.Payload); p.Offset != tt.daddr || p.Len != tt.bytes || p.DestRegister != unix.NFT_REG_1 {
			t.Errorf("%v: daddr load = %+v", tt.fam, p)
		}
		if l := e[1].(*expr.Lookup); l.SourceRegister != unix.NFT_REG_1 || l.DestRegister != unix.NFT_REG_1 || !l.IsDestRegSet || l.SetName != "s" {
			t.Errorf("%v: lookup = %+v", tt.fam, l)
		}
		if c := e[2].(*expr.Ct); !c.SourceRegister || c.Key != expr.CtKeyMARK {
			t.Errorf("%v: ct set = %+v", tt.fam, c)
		}
	}
}
