package nft

import (
	"context"
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
)

func TestOpenRefusesWhatIsNotANetworkNamespace(t *testing.T) {
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	for _, tt := range []struct {
		name string
		ns   NetNS
	}{
		{"a file descriptor that is not a namespace", NetNSFd(int(devnull.Fd()))},
		{"a closed descriptor", NetNSFd(1 << 20)},
		{"a path that is not a namespace", NetNSPath(os.DevNull)},
		{"a missing named namespace", NetNSName("l4nft-does-not-exist")},
	} {
		c, err := Open(tt.ns)
		if err == nil {
			c.Close()
			t.Errorf("%s: Open succeeded", tt.name)
			continue
		}
		var op *OpError
		if !errors.As(err, &op) || op.Op != "open" {
			t.Errorf("%s: Open() = %v, want an *OpError for open", tt.name, err)
		}
	}
	if _, err := Open(NetNSFd(int(devnull.Fd()))); !errors.Is(err, ErrNotNetNS) {
		t.Errorf("Open(/dev/null) = %v, want ErrNotNetNS", err)
	}
}

// A Conn keeps its own descriptor: closing the caller's copy must not send
// the Conn's changes to the host namespace.
func TestConnOutlivesTheCallersDescriptor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
	}
	ns := mustNewNetNS(t)
	c, err := Open(NetNSFd(int(ns)))
	ns.Close() // the caller's copy; the namespace lives on through c
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := NewBatch("l4nft_conn_test")
	b.AddTable()
	if err := c.Commit(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	if ok, err := c.TableExists("l4nft_conn_test"); err != nil || !ok {
		t.Errorf("table in the Conn's namespace: exists=%v err=%v", ok, err)
	}
	hostConn, err := Open(NetNS{})
	if err != nil {
		t.Fatal(err)
	}
	defer hostConn.Close()
	if ok, _ := hostConn.TableExists("l4nft_conn_test"); ok {
		t.Error("the table appeared in the host namespace")
	}
	c.Close()
	if err := c.Commit(context.Background(), b); !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v, want ErrClosed", err)
	}
}

func TestRunInNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_SYS_ADMIN)")
	}
	ns := mustNewNetNS(t)
	defer ns.Close()
	var inside netns.NsHandle
	err := RunInNetNS(NetNSFd(int(ns)), func() error {
		var err error
		inside, err = netns.Get()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Equal(ns) {
		t.Errorf("fn ran in %v, want %v", inside, ns)
	}
	want := errors.New("from fn")
	if err := RunInNetNS(NetNSFd(int(ns)), func() error { return want }); err != want {
		t.Errorf("RunInNetNS() = %v, want fn's error", err)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the panic of fn", v)
			}
		}()
		RunInNetNS(NetNSFd(int(ns)), func() error { panic("boom") })
	}()
}

// mustNewNetNS creates a network namespace and leaves the calling thread
// where it was. The caller owns the returned handle.
func mustNewNetNS(t *testing.T) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	host, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("failed to open the current namespace: %v", err)
	}
	defer host.Close()
	ns, err := netns.New()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("failed to create a namespace: %v", err)
	}
	if err := netns.Set(host); err != nil {
		// Still locked: the thread ends with this goroutine rather than go
		// back to the scheduler in the new namespace.
		t.Fatalf("failed to return to the original namespace: %v", err)
	}
	runtime.UnlockOSThread()
	return ns
}
