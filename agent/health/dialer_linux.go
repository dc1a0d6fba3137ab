package health

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4nft/l4nft/nft"
)

// NetNSDialer returns a DialFunc whose sockets are created in the network
// namespace behind nsFd, which must stay open while the DialFunc is in use.
// Only the socket's creation runs on an OS thread switched into the
// namespace (nft.RunInNetNS), for an instant; the connect runs on the
// caller's goroutine through the runtime's poller, since a socket stays in
// the namespace it was created in. So many checks timing out at once hold
// no OS thread each. address must be a literal "ip:port".
func NetNSDialer(nsFd int) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: %w", network, address, err)
		}
		if network != "tcp" && network != "tcp4" && network != "tcp6" {
			return nil, fmt.Errorf("dial %s %s: unsupported network", network, address)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()})
		if ap.Addr().Is4() {
			family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
		}
		var fd int
		err = nft.RunInNetNS(nft.NetNSFd(nsFd), func() error {
			var err error
			fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("dial %s %s: creating the socket in the namespace: %w", network, address, err)
		}
		return connect(ctx, fd, sa, network, address)
	}
}

// connect connects the non-blocking socket fd to sa, waiting in the
// runtime's poller until ctx is done, and returns it as a net.Conn. It
// always consumes fd.
func connect(ctx context.Context, fd int, sa unix.Sockaddr, network, address string) (net.Conn, error) {
	fail := func(err error) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Net: network, Addr: tcpAddr(address), Err: err}
	}
	f := os.NewFile(uintptr(fd), "health-check") // non-blocking: registered with the poller
	defer f.Close()
	err := unix.Connect(fd, sa)
	if err != nil && err != unix.EINPROGRESS {
		return fail(os.NewSyscallError("connect", err))
	}
	if err == unix.EINPROGRESS {
		if dl, ok := ctx.Deadline(); ok {
			f.SetWriteDeadline(dl)
		}
		stop := context.AfterFunc(ctx, func() { f.SetWriteDeadline(time.Unix(1, 0)) })
		defer stop()
		rc, err := f.SyscallConn()
		if err != nil {
			return fail(err)
		}
		var soErr int
		werr := rc.Write(func(fd uintptr) bool {
			soErr, err = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
			if err != nil {
				return true
			}
			// Not connected yet and no error: wait for writability again.
			if soErr == 0 {
				if _, perr := unix.Getpeername(int(fd)); perr == unix.ENOTCONN {
					return false
				}
			}
			return soErr != int(unix.EINPROGRESS) && soErr != int(unix.EALREADY)
		})
		switch {
		case werr != nil:
			if ctx.Err() != nil {
				return fail(ctx.Err())
			}
			return fail(werr)
		case err != nil:
			return fail(os.NewSyscallError("getsockopt", err))
		case soErr != 0:
			return fail(os.NewSyscallError("connect", unix.Errno(soErr)))
		}
	}
	c, err := net.FileConn(f) // a duplicate of fd; f's is closed on return
	if err != nil {
		return fail(err)
	}
	return c, nil
}

func tcpAddr(address string) net.Addr {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}
