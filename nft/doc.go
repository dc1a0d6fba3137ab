// Package nft holds the typed building blocks l4nft needs on top of
// github.com/google/nftables: connections pinned to one network namespace,
// atomic batches that stay under the kernel's message limits, the
// expressions of the load-balancing pipeline, and reading state back.
//
// Nothing here knows about farms or backends; package lb composes these
// pieces into a ruleset. What this package guarantees is that each piece
// means on the wire what its name says, which is where google/nftables
// leaves room for silent mistakes (see "Pitfalls").
//
// # Network namespaces
//
// A [Conn] owns an open file descriptor of the namespace it acts in for its
// whole life. google/nftables treats a closed or zero descriptor as "the
// host namespace", so [Open] checks that the descriptor really is a network
// namespace and keeps it open until [Conn.Close]; a Conn can never fall back
// to the host namespace.
//
// # Batches
//
// A [Batch] queues operations on one table and [Conn.Commit] sends them as
// one netlink transaction: the kernel applies all of it or none of it.
// Element lists are cut into chunks well below the 64 KiB netlink attribute
// limit (above it the kernel silently truncates the list) and socket buffers
// are raised so that batches of hundreds of thousands of elements fit.
//
// # Pitfalls
//
// Marks, conntrack state bits and numgen output are host-endian; addresses,
// ports and every value compared as a number (cmp lt, interval keys) are
// big-endian. The expression builders in this package insert the byteorder
// conversions needed, so callers pass plain Go integers and netip values.
//
// # Debugging
//
// Rules carry a comment in their user data ([Rule.Comment]); `nft list
// table inet NAME` shows it, and [Conn.Rules] reads it back. Find rules by
// comment, not by expression: the kernel's readback of expressions is lossy.
package nft
