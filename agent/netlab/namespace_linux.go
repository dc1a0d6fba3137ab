package netlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ifaFlagNoDAD marks an IPv6 address as usable without duplicate address
// detection.
const ifaFlagNoDAD = unix.IFA_F_NODAD

// netlinkRoute is the rtnetlink protocol number.
const netlinkRoute = unix.NETLINK_ROUTE

// newNetNS creates a network namespace on a dedicated locked thread and
// returns a handle to it; the thread goes back to its original namespace (or
// is discarded). If bindPath is set, the namespace is also bind-mounted there.
func newNetNS(bindPath string) (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		h, restored, err := unshareNetNS(bindPath)
		if restored {
			runtime.UnlockOSThread()
		} // else the thread dies with this goroutine
		done <- result{h, err}
	}()
	r := <-done
	return r.h, r.err
}

// unshareNetNS must run on a locked thread. restored reports whether the
// thread is back in its original namespace.
func unshareNetNS(bindPath string) (h netns.NsHandle, restored bool, err error) {
	orig, err := netns.Get()
	if err != nil {
		return netns.None(), true, fmt.Errorf("opening the thread's network namespace: %w", err)
	}
	defer orig.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		return netns.None(), true, fmt.Errorf("unshare(CLONE_NEWNET): %w", err)
	}
	h, err = netns.Get()
	if err != nil {
		err = fmt.Errorf("opening the new network namespace: %w", err)
	} else if bindPath != "" {
		if err = bindMountThreadNS(bindPath); err != nil {
			h.Close()
		}
	}
	if serr := netns.Set(orig); serr != nil {
		if h.IsOpen() {
			h.Close()
			if bindPath != "" {
				err = errors.Join(err, removeBindMount(bindPath))
			}
		}
		return netns.None(), false, errors.Join(err, fmt.Errorf("switching the thread back to its network namespace: %w", serr))
	}
	if err != nil {
		return netns.None(), true, err
	}
	return h, true, nil
}

// bindMountThreadNS bind-mounts the calling thread's network namespace at
// path, which must not exist yet.
func bindMountThreadNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", filepath.Dir(path), err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("creating mount point: %w", err)
	}
	f.Close()
	// /proc/self would name the main thread, which is not the one that
	// unshared.
	if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
		return errors.Join(fmt.Errorf("bind-mounting namespace at %s: %w", path, err), os.Remove(path))
	}
	return nil
}

// removeBindMount detaches the bind mount at path and removes the file.
func removeBindMount(path string) error {
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
	}
	return errors.Join(errs...)
}
