package nft

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// NetNS names the network namespace a Conn acts in. The zero value is the
// namespace of the calling thread at the time Open is called.
type NetNS struct {
	path string
	fd   int
	set  bool
}

// NetNSPath is the namespace bound at path, such as /proc/1234/ns/net or
// /run/netns/NAME.
func NetNSPath(path string) NetNS { return NetNS{path: path, set: true} }

// NetNSName is a namespace created by `ip netns add NAME`.
func NetNSName(name string) NetNS {
	return NetNSPath(filepath.Join("/run/netns", name))
}

// NetNSFd is the namespace behind an open descriptor. Open duplicates it, so
// the caller may close its own copy at any time.
func NetNSFd(fd int) NetNS { return NetNS{fd: fd, set: true} }

// String describes the namespace for error messages.
func (n NetNS) String() string {
	switch {
	case !n.set:
		return "current network namespace"
	case n.path != "":
		return n.path
	default:
		return "network namespace fd"
	}
}

// RunInNetNS calls fn on an OS thread switched into ns and returns its
// error. Sockets fn creates belong to ns and stay there; goroutines fn
// starts do not run in ns. The thread goes back to its namespace before it
// is released, or, if that fails, is never used again. A panic in fn is
// raised again in the caller's goroutine.
func RunInNetNS(ns NetNS, fn func() error) error {
	f, err := openNetNS(ns)
	if err != nil {
		return &OpError{Op: "enter", Object: ns.String(), Err: err}
	}
	defer f.Close()
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// No deferred UnlockOSThread: a thread left in the wrong namespace
		// must end with this goroutine rather than go back to the scheduler.
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: &OpError{Op: "enter", Object: ns.String(), Err: err}}
			return
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			orig.Close()
			runtime.UnlockOSThread()
			done <- result{err: &OpError{Op: "enter", Object: ns.String(), Err: err}}
			return
		}
		res := result{err: errors.New("the function passed to RunInNetNS called runtime.Goexit")}
		defer func() {
			if v := recover(); v != nil {
				res = result{panicked: true, value: v}
			}
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				res.err = errors.Join(res.err, &OpError{Op: "leave", Object: ns.String(), Err: err})
			} else {
				runtime.UnlockOSThread()
			}
			orig.Close() // before reporting, so that no descriptor outlives the call
			done <- res
		}()
		res = result{err: fn()}
	}()
	r := <-done
	if r.panicked {
		panic(r.value)
	}
	return r.err
}
