package nft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socketBuffer is the send and receive buffer size of every netlink socket.
// Batches of 100,000 elements need several MiB; the default 200 KiB fails
// with "message too long" or loses acknowledgements (ENOBUFS).
const socketBuffer = 64 << 20

// Conn is a connection to nftables in one network namespace. It is safe for
// concurrent use; commits are serialised.
type Conn struct {
	mu   sync.Mutex
	ns   *os.File // kept open for the Conn's life: see the package doc
	desc string
	// nl is the lasting netlink socket, dialled on first use and dropped
	// after any failure. One socket for the Conn's life matters: closing
	// a netlink socket waits for nf_tables' deferred destroy work (an RCU
	// grace period, 8-30 ms) whenever an earlier transaction freed
	// something, so a socket per transaction made every deletion slow.
	nl *nftables.Conn
	// raw is a socket of its own for generation queries and counter
	// dumps (see rawLocked).
	raw *netlink.Conn
	// readBuffer is the receive buffer size; tests shrink it.
	readBuffer int
}

// Open connects to nftables in ns. It fails with ErrNotNetNS if ns does not
// name a network namespace.
func Open(ns NetNS) (*Conn, error) {
	f, err := openNetNS(ns)
	if err != nil {
		return nil, &OpError{Op: "open", Object: ns.String(), Err: err}
	}
	return &Conn{ns: f, desc: ns.String(), readBuffer: socketBuffer}, nil
}

func openNetNS(ns NetNS) (*os.File, error) {
	var f *os.File
	switch {
	case !ns.set:
		var err error
		if f, err = os.Open("/proc/thread-self/ns/net"); err != nil {
			return nil, err
		}
	case ns.path != "":
		var err error
		if f, err = os.Open(ns.path); err != nil {
			return nil, err
		}
	default:
		fd, err := unix.FcntlInt(uintptr(ns.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("duplicating fd %d: %w", ns.fd, err)
		}
		f = os.NewFile(uintptr(fd), "netns")
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		f.Close()
		return nil, ErrNotNetNS
	}
	return f, nil
}

// raiseBuffers sizes a netlink socket for large batches. As root the *FORCE
// options lift the sysctl caps; otherwise the capped size is still better
// than the default.
func raiseBuffers(write, read int) nftables.SockOption {
	return func(c *netlink.Conn) error {
		if err := c.SetWriteBuffer(write); err != nil {
			return err
		}
		if err := c.SetReadBuffer(read); err != nil {
			return err
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return nil
		}
		_ = raw.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, write)
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, read)
		})
		return nil
	}
}

// Close closes the socket and releases the namespace descriptor. The Conn
// cannot be used again.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return nil
	}
	c.dropLocked()
	err := c.ns.Close()
	c.ns = nil
	return err
}

// dropLocked closes the lasting socket; the next use dials a new one.
func (c *Conn) dropLocked() {
	if c.nl != nil {
		_ = c.nl.CloseLasting()
		c.nl = nil
	}
	c.dropRawLocked()
}

// NetNSFd returns the descriptor of the Conn's namespace, valid until Close.
// Other netlink clients (conntrack) use it to act in the same namespace.
func (c *Conn) NetNSFd() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return -1
	}
	return int(c.ns.Fd())
}

// use runs f under the Conn's lock with the Conn's lasting google/nftables
// connection. If f fails, the socket is dropped and the next call dials a
// new one. That is what keeps a failed build from leaking into the next
// commit: google/nftables has no way to discard queued messages, and it
// keeps a marshalling error for good once one happened. It also discards
// whatever acknowledgements an interrupted receive left unread.
func (c *Conn) use(f func(*nftables.Conn) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return ErrClosed
	}
	if c.nl == nil {
		n, err := nftables.New(
			nftables.WithNetNSFd(int(c.ns.Fd())),
			nftables.WithSockOptions(raiseBuffers(socketBuffer, c.readBuffer)),
			nftables.AsLasting(),
		)
		if err != nil {
			return fmt.Errorf("dialling nftables: %w", err)
		}
		c.nl = n
	}
	if err := f(c.nl); err != nil {
		c.dropLocked()
		return err
	}
	return nil
}

// Commit sends b as one transaction. On error the kernel applied nothing,
// except for one case: an error wrapping ErrStateUnknown means the kernel
// may have committed the batch and then failed to report it (ENOBUFS on the
// acknowledgements); read the state back before trusting either outcome.
// An empty batch sends nothing.
func (c *Conn) Commit(ctx context.Context, b *Batch) error {
	if err := b.Err(); err != nil {
		return &OpError{Op: "commit", Object: "table " + b.table, Err: err}
	}
	if b.Empty() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return &OpError{Op: "commit", Object: "table " + b.table, Err: err}
	}
	err := c.use(func(n *nftables.Conn) error {
		table := &nftables.Table{Name: b.table, Family: nftables.TableFamilyINet}
		sets := map[string]*nftables.Set{}
		for _, op := range b.ops {
			if err := queue(n, table, op, sets); err != nil {
				return fmt.Errorf("building batch, nothing sent: %w", err)
			}
		}
		if err := n.Flush(); err != nil {
			if errors.Is(err, syscall.ENOBUFS) {
				return fmt.Errorf("%w: %w", ErrStateUnknown, err)
			}
			return fmt.Errorf("kernel rejected the transaction of %d messages, %d elements; nothing was applied: %w",
				b.Messages(), b.Elements(), err)
		}
		return nil
	})
	if err != nil {
		return &OpError{Op: "commit", Object: "table " + b.table, Err: err}
	}
	return nil
}

// ErrStateUnknown reports a commit whose outcome the kernel did not tell.
var ErrStateUnknown = errors.New("batch outcome unknown")
