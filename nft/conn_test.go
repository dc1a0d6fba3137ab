package nft

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

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
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
	ns := mustNewNetNS(t)
	defer ns.Close() // the Conn keeps its own descriptor
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

// openTestConn opens a Conn in a new namespace, deleted at cleanup.
func openTestConn(t *testing.T) *Conn {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
	ns := mustNewNetNS(t)
	defer ns.Close() // the Conn keeps its own descriptor
	c, err := Open(NetNSFd(int(ns)))
	if err != nil {
		t.Fatalf("failed to open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustTableExists(t *testing.T, c *Conn, want bool) {
	t.Helper()
	got, err := c.TableExists("t")
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("table exists = %v, want %v", got, want)
	}
}

var testSet = Set{Name: "s", Key: nftables.TypeMark}

// A batch that fails while it is being built sends nothing, and the
// lasting socket, dropped on that path, serves the next commit.
func TestFailedBuildSendsNothing(t *testing.T) {
	c := openTestConn(t)
	ctx := context.Background()
	b := NewBatch("t")
	b.AddTable()
	b.ops = append(b.ops, Op{Verb: 99}) // a build failure after a queued message
	if err := c.Commit(ctx, b); err == nil || !strings.Contains(err.Error(), "nothing sent") {
		t.Fatalf("Commit = %v, want a build error", err)
	}
	mustTableExists(t, c, false)
	good := NewBatch("t")
	good.AddTable()
	if err := c.Commit(ctx, good); err != nil {
		t.Fatalf("commit after a failed build: %v", err)
	}
	mustTableExists(t, c, true)
}

// A batch the kernel refuses changes nothing, and the next commit on the
// same Conn works.
func TestRejectedBatchThenNextCommit(t *testing.T) {
	c := openTestConn(t)
	ctx := context.Background()
	b := NewBatch("t")
	b.AddTable()
	b.AddSet(testSet)
	if err := c.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	bad := NewBatch("t")
	bad.AddElements(testSet, []Element{{Key: Mark(1)}})
	bad.DeleteElements(testSet, []Element{{Key: Mark(2)}}) // ENOENT
	if err := c.Commit(ctx, bad); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("Commit = %v, want ENOENT", err)
	}
	if es, err := c.Elements("t", testSet); err != nil || len(es) != 0 {
		t.Fatalf("after a refused batch the set holds %d elements (err %v), want 0", len(es), err)
	}
	ok := NewBatch("t")
	ok.AddElements(testSet, []Element{{Key: Mark(1)}})
	if err := c.Commit(ctx, ok); err != nil {
		t.Fatalf("commit after a refused one: %v", err)
	}
	for i := range uint32(100) { // the lasting socket carries many in a row
		one := NewBatch("t")
		one.AddElements(testSet, []Element{{Key: Mark(i + 2)}})
		one.DeleteElements(testSet, []Element{{Key: Mark(i + 1)}})
		if err := c.Commit(ctx, one); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
}

// Acknowledgements lost to a full receive buffer (ENOBUFS) are reported
// as ErrStateUnknown, whose batch may well have been committed; the Conn
// then works again.
func TestLostAcknowledgementsAreStateUnknown(t *testing.T) {
	c := openTestConn(t)
	c.readBuffer = 1024 // far too small for the acknowledgements of the batch below
	ctx := context.Background()
	b := NewBatch("t")
	b.AddTable()
	b.AddSet(testSet)
	for i := range 2000 {
		b.AddElements(testSet, []Element{{Key: Mark(uint32(i + 1))}}) // a message each
	}
	err := c.Commit(ctx, b)
	if !errors.Is(err, ErrStateUnknown) {
		t.Fatalf("Commit with a tiny receive buffer = %v, want ErrStateUnknown", err)
	}
	c.readBuffer = socketBuffer
	es, err := c.Elements("t", testSet)
	if err != nil {
		t.Fatalf("reading back after ENOBUFS: %v", err)
	}
	t.Logf("the kernel committed %d of 2000 elements although the acknowledgements were lost", len(es))
	if len(es) != 2000 {
		t.Errorf("set holds %d elements: the batch was not atomic", len(es))
	}
}

// Watch reports another process's change to the table, within a second,
// and not this process's own commits nor changes to other tables.
func TestWatchReportsForeignChangesOnly(t *testing.T) {
	c := openTestConn(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := NewBatch("t")
	b.AddTable()
	b.AddSet(testSet)
	if err := c.Commit(ctx, b); err != nil {
		t.Fatal(err)
	}
	events := make(chan struct{}, 100)
	done := make(chan error, 1)
	listening := make(chan struct{})
	go func() { done <- c.Watch(ctx, "t", func() { close(listening) }, func() { events <- struct{}{} }) }()
	<-listening
	// Our own commits: nothing to report. Give the watcher time to join
	// the group by committing until a foreign change is seen below.
	for i := range uint32(20) {
		own := NewBatch("t")
		own.AddElements(testSet, []Element{{Key: Mark(i + 1)}})
		if err := c.Commit(ctx, own); err != nil {
			t.Fatal(err)
		}
	}
	nsFd := c.NetNSFd()
	runNft := func(args ...string) {
		t.Helper()
		cmd := exec.Command("nsenter", append([]string{"--net=/proc/self/fd/3", "nft"}, args...)...)
		cmd.ExtraFiles = []*os.File{os.NewFile(uintptr(nsFd), "netns")}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
	}
	runNft("add", "table", "inet", "other")
	runNft("add", "element", "inet", "t", "s", "{ 0x00000100 }")
	select {
	case <-events:
	case <-time.After(2 * time.Second):
		t.Fatal("a foreign change to the table was not reported within 2 s")
	}
	select {
	case <-events:
		t.Error("more than one event for one foreign transaction (own commits or another table reported)")
	case <-time.After(200 * time.Millisecond):
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch = %v", err)
	}
}
