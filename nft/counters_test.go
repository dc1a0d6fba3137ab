package nft

import (
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// A NEWSETELEM message as the kernel writes it for a counted set decodes
// to keys and counters; a truncated one is an error, never a panic.
func TestAppendCountersDecodesTheKernelsLayout(t *testing.T) {
	u64 := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	must := func(attrs []netlink.Attribute) []byte {
		b, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	elem := func(key []byte, packets, bytes uint64) netlink.Attribute {
		counter := must([]netlink.Attribute{{Type: unix.NFTA_COUNTER_BYTES, Data: u64(bytes)}, {Type: unix.NFTA_COUNTER_PACKETS, Data: u64(packets)}})
		expr := must([]netlink.Attribute{{Type: unix.NFTA_EXPR_NAME, Data: []byte("counter\x00")}, {Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: counter}})
		return netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: must([]netlink.Attribute{
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_KEY, Data: must([]netlink.Attribute{{Type: unix.NFTA_DATA_VALUE, Data: key}})},
			{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_EXPR, Data: expr},
		})}
	}
	msg := must([]netlink.Attribute{
		{Type: unix.NFTA_SET_ELEM_LIST_TABLE, Data: []byte("t\x00")},
		{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: []byte("s\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_SET_ELEM_LIST_ELEMENTS, Data: must([]netlink.Attribute{elem(Mark(7), 3, 300), elem(Mark(9), 1, 60)})},
	})
	got, err := appendCounters(nil, msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || ParseMark(got[0].Key) != 7 || got[0].Packets != 3 || got[0].Bytes != 300 || ParseMark(got[1].Key) != 9 || got[1].Packets != 1 {
		t.Errorf("decoded %+v", got)
	}
	for n := range len(msg) {
		appendCounters(nil, msg[:n]) // must not panic
	}
}
