package nft

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

func TestChunksStayUnderTheAttributeLimit(t *testing.T) {
	var elems []Element
	for i := range 5000 {
		elems = append(elems, Element{
			Key: Mark(uint32(i)), Value: bytes.Repeat([]byte{1}, 20),
			Comment: strings.Repeat("c", 100) + fmt.Sprint(i),
		})
	}
	got := chunks(elems)
	n := 0
	for i, c := range got {
		size := 0
		for _, e := range c {
			size += e.size()
		}
		if len(c) > maxChunkElements || size > maxChunkBytes {
			t.Errorf("chunk %d: %d elements, ~%d bytes; limits %d, %d", i, len(c), size, maxChunkElements, maxChunkBytes)
		}
		n += len(c)
	}
	if n != len(elems) {
		t.Errorf("chunks hold %d elements, want %d", n, len(elems))
	}
}

func TestBatchKeepsFirstError(t *testing.T) {
	b := NewBatch("t")
	b.AddSet(Set{Name: "s"})
	b.AddSet(Set{Name: "s"})
	b.AddRule("c", Rule{})
	if b.Err() == nil || !strings.Contains(b.Err().Error(), `set "s" added twice`) {
		t.Errorf("Err() = %v, want the duplicate set", b.Err())
	}
	if b.Messages() != 1 {
		t.Errorf("Messages() = %d, want 1 (nothing queued after the error)", b.Messages())
	}
}
