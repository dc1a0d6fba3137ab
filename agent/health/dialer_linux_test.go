package health

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// mustNetNS creates a network namespace with lo up and returns its handle;
// the calling thread's namespace is unchanged.
func mustNetNS(tb testing.TB) netns.NsHandle {
	tb.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		tb.Fatalf("failed to get the current namespace: %v", err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		tb.Fatalf("failed to create a namespace: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			panic(err) // never leave the thread in the test namespace
		}
	}()
	tb.Cleanup(func() { ns.Close() })
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		err = netlink.LinkSetUp(lo)
	}
	if err != nil {
		tb.Fatalf("failed to set lo up: %v", err)
	}
	return ns
}

// inNetNS runs fn on a thread switched into ns.
func inNetNS(tb testing.TB, ns netns.NsHandle, fn func()) {
	tb.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			tb.Errorf("failed to get the current namespace: %v", err)
			return
		}
		if err := netns.Set(ns); err != nil {
			tb.Errorf("failed to enter the namespace: %v", err)
			return
		}
		fn()
		if err := netns.Set(orig); err != nil {
			return // thread stays locked and dies
		}
		runtime.UnlockOSThread()
	}()
	<-done
}

func TestNetNSDialer(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
	ns := mustNetNS(t)
	var l net.Listener
	inNetNS(t, ns, func() {
		var err error
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Errorf("failed to listen in the namespace: %v", err)
		}
	})
	if l == nil {
		t.FailNow()
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := netip.MustParseAddrPort(l.Addr().String())
	spec := Spec{Type: TCP}.WithDefaults()
	if err := Check(t.Context(), NetNSDialer(int(ns)), spec, addr); err != nil {
		t.Fatalf("check from inside the namespace failed: %v", err)
	}
	var d net.Dialer
	if err := Check(t.Context(), d.DialContext, spec, addr); err == nil {
		t.Fatal("check from the test's namespace reached a listener in another namespace")
	}
}
