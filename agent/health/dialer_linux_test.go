package health

import (
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

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

// threads returns the process's number of OS threads.
func threads(tb testing.TB) int {
	tb.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatalf("failed to read /proc/self/status: %v", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				tb.Fatalf("failed to parse %q: %v", line, err)
			}
			return n
		}
	}
	tb.Fatal("no Threads line in /proc/self/status")
	return 0
}

func TestNetNSDialerTimeoutsHoldNoThreads(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
	ns := mustNetNS(t)
	// A veth pair whose peer has no address: nothing answers ARP for
	// 192.0.2.2, so connects wait (for seconds) and time out.
	inNetNS(t, ns, func() {
		link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "void0"}, PeerName: "void1"}
		if err := netlink.LinkAdd(link); err != nil {
			t.Errorf("failed to add a veth pair: %v", err)
			return
		}
		if peer, err := netlink.LinkByName("void1"); err != nil || netlink.LinkSetUp(peer) != nil {
			t.Errorf("failed to set the peer up: %v", err)
		}
		addr, _ := netlink.ParseAddr("192.0.2.1/24")
		if err := netlink.AddrAdd(link, addr); err != nil {
			t.Errorf("failed to add an address: %v", err)
		}
		if err := netlink.LinkSetUp(link); err != nil {
			t.Errorf("failed to set the link up: %v", err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	dial := NetNSDialer(int(ns))
	spec := Spec{Type: TCP, Timeout: time.Second}.WithDefaults()
	const targets = 200
	base := threads(t)
	var wg sync.WaitGroup
	errs := make(chan error, targets)
	start := time.Now()
	for i := range targets {
		wg.Go(func() {
			addr := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), uint16(1000+i))
			errs <- Check(t.Context(), dial, spec, addr)
		})
	}
	peak := base
	for done := false; !done; {
		peak = max(peak, threads(t))
		select {
		case <-time.After(20 * time.Millisecond):
		case <-waitChan(&wg):
			done = true
		}
	}
	close(errs)
	for err := range errs {
		if err == nil {
			t.Fatal("a check of a black hole passed")
		}
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 5*time.Second {
		t.Errorf("the checks took %v, want about their 1s timeout", d)
	}
	if peak-base > 50 {
		t.Errorf("%d checks timing out at once took the process from %d to %d OS threads", targets, base, peak)
	}
}

// waitChan is closed when wg is done.
func waitChan(wg *sync.WaitGroup) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		wg.Wait()
		close(c)
	}()
	return c
}
