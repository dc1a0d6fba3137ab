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
}

// Open connects to nftables in ns. It fails with ErrNotNetNS if ns does not
// name a network namespace.
func Open(ns NetNS) (*Conn, error) {
	f, err := openNetNS(ns)
	if err != nil {
		return nil, &OpError{Op: "open", Object: ns.String(), Err: err}
	}
	return &Conn{ns: f, desc: ns.String()}, nil
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
func raiseBuffers(c *netlink.Conn) error {
	if err := c.SetWriteBuffer(socketBuffer); err != nil {
		return err
	}
	if err := c.SetReadBuffer(socketBuffer); err != nil {
		return err
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return nil
	}
	_ = raw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer)
	})
	return nil
}

// Close releases the namespace descriptor. The Conn cannot be used again.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return nil
	}
	err := c.ns.Close()
	c.ns = nil
	return err
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

// use runs f under the Conn's lock with a fresh google/nftables connection
// in the Conn's namespace. A fresh one per call means a batch that fails
// while being built is simply dropped: google/nftables has no way to discard
// queued messages, and a later Flush would send them.
func (c *Conn) use(f func(*nftables.Conn) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ns == nil {
		return ErrClosed
	}
	n, err := nftables.New(
		nftables.WithNetNSFd(int(c.ns.Fd())),
		nftables.WithSockOptions(raiseBuffers),
	)
	if err != nil {
		return err
	}
	return f(n)
}

// Commit sends b as one transaction. On error the kernel applied nothing,
// except for one case: an error wrapping ErrStateUnknown means the kernel
// may have committed the batch and then failed to report it (ENOBUFS on the
// acknowledgements); read the state back before trusting either outcome.
// An empty batch sends nothing.
func (c *Conn) Commit(ctx context.Context, b *Batch) error {
	if err := b.Err(); err != nil {
		return &OpError{Op: "commit", Object: "table " + b.table.Name, Err: err}
	}
	if b.Empty() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return &OpError{Op: "commit", Object: "table " + b.table.Name, Err: err}
	}
	err := c.use(func(n *nftables.Conn) error {
		for _, op := range b.ops {
			if err := op(n); err != nil {
				return fmt.Errorf("building batch: %w", err)
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
		return &OpError{Op: "commit", Object: "table " + b.table.Name, Err: err}
	}
	return nil
}

// ErrStateUnknown reports a commit whose outcome the kernel did not tell.
var ErrStateUnknown = errors.New("batch outcome unknown")
