package health

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"golang.org/x/sys/unix"
)

// NetNSDialer returns a DialFunc whose sockets are created in the network
// namespace behind nsFd. The descriptor must stay open while the DialFunc
// is in use. Each dial runs on its own goroutine locked to an OS thread
// that is switched into the namespace for the dial and back afterwards; a
// thread that cannot be switched back is discarded rather than reused.
func NetNSDialer(nsFd int) DialFunc {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		type result struct {
			c   net.Conn
			err error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				runtime.UnlockOSThread()
				done <- result{nil, fmt.Errorf("opening the thread's network namespace: %w", err)}
				return
			}
			defer unix.Close(orig)
			if err := unix.Setns(nsFd, unix.CLONE_NEWNET); err != nil {
				runtime.UnlockOSThread()
				done <- result{nil, fmt.Errorf("entering the balancer's network namespace: %w", err)}
				return
			}
			// The address is a literal: the socket is created on this
			// thread, so it belongs to the namespace.
			var d net.Dialer
			c, err := d.DialContext(ctx, network, address)
			if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
				// Leave the thread locked: it exits with this goroutine.
				if c != nil {
					c.Close()
				}
				done <- result{nil, fmt.Errorf("leaving the balancer's network namespace: %w", serr)}
				return
			}
			runtime.UnlockOSThread()
			done <- result{c, err}
		}()
		r := <-done
		return r.c, r.err
	}
}
