//go:build linux

package testbed_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/l4nft/l4nft/agent/netlab"
	"github.com/l4nft/l4nft/integration/testbed"
)

// The re-exported types are netlab's own, not copies.
var (
	_ *netlab.Topology    = (*testbed.Topology)(nil)
	_ *netlab.Namespace   = (*testbed.Namespace)(nil)
	_ *netlab.Client      = (*testbed.Client)(nil)
	_ *netlab.Conn        = (*testbed.Conn)(nil)
	_ netlab.Options      = testbed.Options{}
	_ netlab.SpreadResult = testbed.SpreadResult{}
	_ testbed.TB          = (*testing.T)(nil)
	_ testbed.TB          = (*testing.B)(nil)
)

func TestReexports(t *testing.T) {
	if testbed.ErrClosed != netlab.ErrClosed {
		t.Error("testbed.ErrClosed is not netlab.ErrClosed")
	}
	if !slices.Equal(testbed.PortRange(1, 3), []uint16{1, 2, 3}) {
		t.Errorf("PortRange(1, 3) = %v", testbed.PortRange(1, 3))
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
}

// fakeTB records what ForTest and NamespaceForTest ask of a test, so that
// the test can run the cleanups itself and check what they did.
type fakeTB struct {
	t        *testing.T
	cleanups []func()
	errors   []string
	logs     int
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Cleanup(fn func())              { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) Errorf(format string, a ...any) { f.errors = append(f.errors, format) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.t.Fatalf(format, a...) }
func (f *fakeTB) Logf(string, ...any)            { f.logs++ }

func (f *fakeTB) runCleanups() {
	for _, fn := range slices.Backward(f.cleanups) {
		fn()
	}
	f.cleanups = nil
}

func TestForTest(t *testing.T) {
	requireRoot(t)
	f := &fakeTB{t: t}
	bed := testbed.ForTest(f, testbed.Options{Named: true, Prefix: "l4nft-testbed"})
	t.Cleanup(func() { bed.Close() })
	if len(f.cleanups) != 1 || f.logs != 1 {
		t.Fatalf("ForTest registered %d cleanups and logged %d times, want 1 and 1", len(f.cleanups), f.logs)
	}
	var paths []string
	for _, n := range bed.Namespaces() {
		p := filepath.Join(testbed.BindMountDir, n.NetnsName())
		if _, err := os.Stat(p); err != nil {
			t.Errorf("named namespace %s: %v", n.Name(), err)
		}
		paths = append(paths, p)
	}
	f.runCleanups()
	if len(f.errors) > 0 {
		t.Errorf("teardown reported %q", f.errors)
	}
	for _, p := range paths {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind after the test's cleanup (%v)", p, err)
		}
	}
}

func TestNamespaceForTest(t *testing.T) {
	requireRoot(t)
	f := &fakeTB{t: t}
	n := testbed.NamespaceForTest(f, "ns")
	t.Cleanup(func() { n.Close() })
	if n.Fd() < 0 || n.Name() != "ns" || n.NetnsName() != "" {
		t.Fatalf("NamespaceForTest = fd %d, name %q, netns name %q; want an open unnamed namespace called ns", n.Fd(), n.Name(), n.NetnsName())
	}
	f.runCleanups()
	if len(f.errors) > 0 {
		t.Errorf("cleanup reported %q", f.errors)
	}
	if err := n.Do(func() error { return nil }); !errors.Is(err, testbed.ErrClosed) {
		t.Errorf("Do after the test's cleanup = %v, want ErrClosed", err)
	}
}
