package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/l4nft/l4nft/nft"
)

// ErrClosed is returned (wrapped) by operations on a Namespace, or on
// anything living in one, after it was closed.
var ErrClosed = errors.New("netlab: namespace closed")

// BindMountDir is where named namespaces are bind-mounted, as by `ip netns add`.
const BindMountDir = "/run/netns"

// Namespace is a network namespace kept alive by an open file descriptor and,
// if it is named, by a bind mount under BindMountDir. It is safe for
// concurrent use.
type Namespace struct {
	name      string // role, e.g. "lb"
	netnsName string // name under BindMountDir, or ""

	mu     sync.RWMutex
	handle netns.NsHandle // -1 once closed
}

// NewNamespace creates a network namespace for the given role (used in error
// messages and as Name). If netnsName is not empty, the namespace is also
// bind-mounted at BindMountDir/netnsName, which must not exist yet. The
// loopback interface of the new namespace is up. The namespace of the calling
// thread is not changed.
//
// Requires CAP_SYS_ADMIN (and CAP_NET_ADMIN to use the namespace).
func NewNamespace(name, netnsName string) (*Namespace, error) {
	if netnsName != "" && (strings.ContainsRune(netnsName, '/') || netnsName == "." || netnsName == "..") {
		return nil, fmt.Errorf("creating namespace %q: invalid name %q", name, netnsName)
	}
	var path string
	if netnsName != "" {
		path = filepath.Join(BindMountDir, netnsName)
	}
	h, err := newNetNS(path)
	if err != nil {
		return nil, fmt.Errorf("creating namespace %q: %w", name, err)
	}
	n := &Namespace{name: name, netnsName: netnsName, handle: h}
	if err := n.setLinkUp("lo"); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return n, nil
}

// Name returns the role the namespace was created for, such as "lb",
// "client0" or "backend1". Backends answer with this name.
func (n *Namespace) Name() string { return n.name }

// NetnsName returns the name under BindMountDir, as used by `ip netns` and
// l4nft's --netns flag, or "" if the namespace is unnamed.
func (n *Namespace) NetnsName() string { return n.netnsName }

// Fd returns the file descriptor holding the namespace, for
// nftables.WithNetNSFd and similar APIs, or -1 after Close. It stays valid
// (and must not be closed by the caller) until Close.
func (n *Namespace) Fd() int {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return int(n.handle)
}

// Handle returns the namespace as a netns.NsHandle, for netlink.NewHandleAt
// and similar APIs. It is owned by the Namespace, stays valid until Close and
// must not be closed by the caller.
func (n *Namespace) Handle() netns.NsHandle {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.handle
}

// Path returns a file system path that opens the namespace: the bind mount
// for a named namespace, otherwise /proc/<pid>/fd/<fd>. It is valid until
// Close.
func (n *Namespace) Path() string {
	if n.netnsName != "" {
		return filepath.Join(BindMountDir, n.netnsName)
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), n.Fd())
}

// Do runs fn on an OS thread switched into the namespace and returns its
// error (nft.RunInNetNS). Sockets created by fn stay in the namespace;
// goroutines started by fn do not run in it. A panic in fn is re-raised in
// the caller's goroutine. Close waits for running Do calls.
func (n *Namespace) Do(fn func() error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.handle < 0 {
		return fmt.Errorf("%s: %w", n.name, ErrClosed)
	}
	return nft.RunInNetNS(nft.NetNSFd(int(n.handle)), fn)
}

// Command returns a command that runs the named program inside the
// namespace, through nsenter(1) and Path; no bind mount is needed. It must be
// started before Close. If nsenter is not installed, Start reports that.
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=" + n.Path(), "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	if n.Fd() < 0 && cmd.Err == nil {
		cmd.Err = fmt.Errorf("%s: running %s: %w", n.name, name, ErrClosed)
	}
	return cmd
}

// SetSysctl writes value to the sysctl key ("net.ipv4.ip_forward" or
// "net/ipv4/ip_forward") inside the namespace.
func (n *Namespace) SetSysctl(key, value string) error {
	p := sysctlPath(key)
	err := n.Do(func() error { return os.WriteFile(p, []byte(value), 0) })
	if err != nil {
		return fmt.Errorf("%s: setting sysctl %s=%s: %w", n.name, key, value, err)
	}
	return nil
}

// Sysctl reads the sysctl key inside the namespace, without the trailing newline.
func (n *Namespace) Sysctl(key string) (string, error) {
	var b []byte
	err := n.Do(func() (err error) {
		b, err = os.ReadFile(sysctlPath(key))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s: reading sysctl %s: %w", n.name, key, err)
	}
	return strings.TrimSuffix(string(b), "\n"), nil
}

func sysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key)
}

// Close releases the namespace: it closes the file descriptor and, for a named
// namespace, unmounts and removes the bind mount. The kernel frees the
// namespace once nothing else (a process, a socket) refers to it. Close is
// idempotent.
func (n *Namespace) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.handle < 0 {
		return nil
	}
	var errs []error
	if err := n.handle.Close(); err != nil {
		errs = append(errs, fmt.Errorf("%s: closing namespace fd: %w", n.name, err))
	}
	n.handle = -1
	if n.netnsName != "" {
		if err := removeBindMount(filepath.Join(BindMountDir, n.netnsName)); err != nil {
			errs = append(errs, fmt.Errorf("%s: removing named namespace: %w", n.name, err))
		}
	}
	return errors.Join(errs...)
}
