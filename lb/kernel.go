package lb

import (
	"context"

	"github.com/l4nft/l4nft/nft"
)

// kernel is what a Balancer needs of nftables: commit a batch, read the
// table back, tell the ruleset generation. *nft.Conn is the real one; the
// tests use an in-memory fake with the kernel's all-or-nothing batches,
// EEXIST and ENOENT.
type kernel interface {
	Commit(ctx context.Context, b *nft.Batch) error
	TableExists(table string) (bool, error)
	Sets(table string) ([]nft.Set, error)
	Elements(table string, s nft.Set) ([]nft.Element, error)
	Chains(table string) ([]string, error)
	Rules(table, chain string) ([]nft.RuleInfo, error)
	// Counters reads the counters of a counted set's elements.
	Counters(table string, s nft.Set) ([]nft.Element, error)
	Generation() (uint32, error)
	// Identity names the namespace for as long as the system runs.
	Identity() (string, error)
	Close() error
}

// conntrackFlusher cuts connections by mark; the real one needs the
// namespace's descriptor.
type conntrackFlusher func(mask uint32, marks []uint32) error
