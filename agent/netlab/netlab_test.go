//go:build linux

package netlab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l4nft/l4nft/agent/netlab"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (CAP_NET_ADMIN)")
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// forTest builds a topology and closes it when the test ends; the exported
// helper, testbed.ForTest, lives in the test tree.
func forTest(t *testing.T, opts netlab.Options) *netlab.Topology {
	t.Helper()
	bed, err := netlab.New(testContext(t), opts)
	if err != nil {
		t.Fatalf("failed to build topology: %v", err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Errorf("failed to tear down topology %s: %v", bed.ID, err)
		}
	})
	return bed
}

// namespaceForTest creates an unnamed namespace, closed when the test ends.
func namespaceForTest(t *testing.T, name string) *netlab.Namespace {
	t.Helper()
	n, err := netlab.NewNamespace(name, "")
	if err != nil {
		t.Fatalf("failed to create namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("failed to close namespace %s: %v", name, err)
		}
	})
	return n
}

// nsID returns the "net:[inode]" string the kernel shows for fd's namespace.
func nsID(t *testing.T, fd int) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("failed to stat namespace fd %d: %v", fd, err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino)
}

// openNetNSFDs lists the network namespaces this process holds open by fd.
func openNetNSFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("failed to list fds: %v", err)
	}
	var ids []string
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(target, "net:[") {
			ids = append(ids, target)
		}
	}
	slices.Sort(ids)
	return ids
}

func hostLinks(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("failed to list host links: %v", err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	slices.Sort(names)
	return names
}

func TestDirectTraffic(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Clients: 2, Backends: 3, Ports: []uint16{80, 8080}})
	ctx := testContext(t)

	tests := []struct {
		network string
		v6      bool
	}{
		{"tcp", false},
		{"tcp4", false},
		{"tcp6", true},
		{"udp", false},
		{"udp4", false},
		{"udp6", true},
	}
	for _, c := range bed.Clients {
		for _, b := range bed.Backends {
			for _, port := range b.Ports {
				for _, tt := range tests {
					dstAddr, wantSrc := b.Addr4, c.Addr4
					if tt.v6 {
						dstAddr, wantSrc = b.Addr6, c.Addr6
					}
					dst := netip.AddrPortFrom(dstAddr, port)
					t.Run(fmt.Sprintf("%s/%s/%s/%s", c.Name(), b.Name(), tt.network, dst), func(t *testing.T) {
						r, err := c.Ask(ctx, tt.network, dst)
						if err != nil {
							t.Fatalf("failed to ask: %v", err)
						}
						if r.Backend != b.Name() || r.Source.Addr() != wantSrc || r.Source.Port() == 0 {
							t.Errorf("Ask(%s, %s) = %v, want backend %s and source %s:<port>", tt.network, dst, r, b.Name(), wantSrc)
						}
					})
				}
			}
		}
	}
}

func TestConnRoundTrip(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Backends: 1})
	ctx := testContext(t)
	c, b := bed.Clients[0], bed.Backends[0]

	for _, tt := range []struct {
		network string
		dst     netip.Addr
	}{
		{"tcp4", b.Addr4},
		{"tcp6", b.Addr6},
		{"udp4", b.Addr4},
		{"udp6", b.Addr6},
	} {
		t.Run(tt.network, func(t *testing.T) {
			conn, err := c.Dial(ctx, tt.network, netip.AddrPortFrom(tt.dst, 80))
			if err != nil {
				t.Fatalf("failed to dial: %v", err)
			}
			defer conn.Close()
			if got, want := conn.First().Source, conn.LocalAddr(); got != want {
				t.Errorf("backend saw source %s, want the connection's local address %s", got, want)
			}
			for i := range 5 {
				name, err := conn.RoundTrip(ctx)
				if err != nil {
					t.Fatalf("round trip %d failed: %v", i, err)
				}
				if name != b.Name() {
					t.Errorf("round trip %d answered by %q, want %q", i, name, b.Name())
				}
			}
		})
	}
}

func TestStopStartServers(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Backends: 2})
	ctx := testContext(t)
	c, b0, b1 := bed.Clients[0], bed.Backends[0], bed.Backends[1]

	conn, err := c.Dial(ctx, "tcp", netip.AddrPortFrom(b0.Addr4, 80))
	if err != nil {
		t.Fatalf("failed to dial: %v", err)
	}
	defer conn.Close()

	b0.StopServers()
	b0.StopServers() // no-op
	if b0.Serving() {
		t.Errorf("Serving() = true after StopServers")
	}
	if _, err := conn.RoundTrip(ctx); err == nil {
		t.Errorf("round trip on a connection to a stopped server succeeded")
	}
	for _, network := range []string{"tcp4", "tcp6", "udp4", "udp6"} {
		dst := netip.AddrPortFrom(b0.Addr4, 80)
		if strings.HasSuffix(network, "6") {
			dst = netip.AddrPortFrom(b0.Addr6, 80)
		}
		_, err := c.Ask(ctx, network, dst)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("Ask(%s, %s) on stopped server: error %v, want connection refused", network, dst, err)
		}
	}
	if _, err := c.Ask(ctx, "tcp", netip.AddrPortFrom(b1.Addr4, 80)); err != nil {
		t.Errorf("failed to ask the other backend: %v", err)
	}

	if err := b0.StartServers(); err != nil {
		t.Fatalf("failed to restart servers: %v", err)
	}
	for _, network := range []string{"tcp", "udp"} {
		if r, err := c.Ask(ctx, network, netip.AddrPortFrom(b0.Addr4, 80)); err != nil || r.Backend != b0.Name() {
			t.Errorf("Ask(%s) after restart = %v, %v; want %s", network, r, err, b0.Name())
		}
	}
}

func TestSpread(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Backends: 1, Ports: netlab.PortRange(8000, 8003)})
	ctx := testContext(t)
	b := bed.Backends[0]
	if want := []uint16{8000, 8001, 8002, 8003}; !slices.Equal(b.Ports, want) {
		t.Fatalf("Ports = %v, want %v", b.Ports, want)
	}
	for _, network := range []string{"tcp", "udp"} {
		t.Run(network, func(t *testing.T) {
			r := bed.Clients[0].Spread(ctx, network, netip.AddrPortFrom(b.Addr6, 8003), 50, 8)
			if r.Errors != 0 || r.Counts[b.Name()] != 50 || r.Total() != 50 {
				t.Errorf("Spread = %v (first error: %v), want %s=50 errors=0", r, r.Err, b.Name())
			}
		})
	}

	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		r := bed.Clients[0].Spread(ctx, "tcp", netip.AddrPortFrom(b.Addr4, 8000), 1000, 4)
		if r.Total() != 0 {
			t.Errorf("Spread with a cancelled context made %d connections, want 0", r.Total())
		}
	})
}

func TestVIP(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Backends: 1})
	ctx := testContext(t)
	lb, c := bed.Balancer, bed.Clients[0]

	for _, vip := range []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8:f::7")} {
		t.Run(vip.String(), func(t *testing.T) {
			if err := lb.AddVIP(vip); err != nil {
				t.Fatalf("failed to add VIP: %v", err)
			}
			if err := lb.AddVIP(vip); err == nil {
				t.Errorf("adding VIP %s twice succeeded", vip)
			}
			// A server on the balancer's VIP is reachable from the client
			// through its default route.
			var l net.Listener
			err := lb.Do(func() (err error) {
				l, err = net.Listen("tcp", netip.AddrPortFrom(vip, 0).String())
				return err
			})
			if err != nil {
				t.Fatalf("failed to listen on VIP: %v", err)
			}
			defer l.Close()
			accepted := make(chan netip.AddrPort, 1)
			go func() {
				conn, err := l.Accept()
				if err != nil {
					close(accepted)
					return
				}
				accepted <- conn.RemoteAddr().(*net.TCPAddr).AddrPort()
				conn.Close()
			}()
			var conn net.Conn
			err = c.Do(func() (err error) {
				var d net.Dialer
				conn, err = d.DialContext(ctx, "tcp", l.Addr().String())
				return err
			})
			if err != nil {
				t.Fatalf("failed to connect to VIP: %v", err)
			}
			defer conn.Close()
			select {
			case src := <-accepted:
				if src.Addr().Unmap() != c.Addr4 && src.Addr() != c.Addr6 {
					t.Errorf("balancer saw source %s, want the client's address", src)
				}
			case <-ctx.Done():
				t.Fatal("balancer did not accept the connection")
			}

			if err := lb.RemoveVIP(vip); err != nil {
				t.Errorf("failed to remove VIP: %v", err)
			}
		})
	}
	if err := lb.AddVIP(netip.Addr{}); err == nil {
		t.Errorf("AddVIP(invalid) succeeded")
	}
}

func TestCommand(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skipf("nsenter not installed: %v", err)
	}
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("failed to read host namespace: %v", err)
	}
	_, ipErr := exec.LookPath("ip")

	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			bed := forTest(t, netlab.Options{Backends: 1, Named: named})
			ctx := testContext(t)
			for _, tt := range []struct {
				ns   *netlab.Namespace
				addr netip.Addr
			}{
				{bed.Balancer.Namespace, bed.Balancer.ClientAddr4},
				{bed.Clients[0].Namespace, bed.Clients[0].Addr4},
				{bed.Backends[0].Namespace, bed.Backends[0].Addr6},
			} {
				t.Run(tt.ns.Name(), func(t *testing.T) {
					out, err := tt.ns.Command(ctx, "readlink", "/proc/self/ns/net").Output()
					if err != nil {
						t.Fatalf("failed to run readlink in %s: %v", tt.ns.Name(), err)
					}
					got, want := strings.TrimSpace(string(out)), nsID(t, tt.ns.Fd())
					if got != want || got == hostNS {
						t.Errorf("command ran in namespace %s, want %s (host is %s)", got, want, hostNS)
					}
					if ipErr != nil {
						return
					}
					if named {
						// What l4nft --netns NAME and ip netns exec do.
						out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tt.ns.NetnsName(), "readlink", "/proc/self/ns/net").Output()
						if err != nil {
							t.Fatalf("failed to run ip netns exec %s: %v", tt.ns.NetnsName(), err)
						}
						if got := strings.TrimSpace(string(out)); got != want {
							t.Errorf("ip netns exec %s ran in %s, want %s", tt.ns.NetnsName(), got, want)
						}
					}
					out, err = tt.ns.Command(ctx, "ip", "-o", "addr", "show").Output()
					if err != nil {
						t.Fatalf("failed to run ip in %s: %v", tt.ns.Name(), err)
					}
					if !strings.Contains(string(out), " "+tt.addr.String()+"/") {
						t.Errorf("ip -o addr show in %s does not list %s:\n%s", tt.ns.Name(), tt.addr, out)
					}
				})
			}
		})
	}
}

func TestDo(t *testing.T) {
	requireRoot(t)
	bed := forTest(t, netlab.Options{Backends: 1})
	lb := bed.Balancer
	hostNS, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatalf("failed to read host namespace: %v", err)
	}

	var inside string
	if err := lb.Do(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatalf("Do failed: %v", err)
	}
	if want := nsID(t, lb.Fd()); inside != want {
		t.Errorf("Do ran in %s, want %s", inside, want)
	}

	wantErr := errors.New("boom")
	if err := lb.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("Do returned %v, want %v", err, wantErr)
	}
	func() {
		defer func() {
			if v := recover(); v != "panic inside" {
				t.Errorf("recovered %v, want the panic from inside Do", v)
			}
		}()
		lb.Do(func() error { panic("panic inside") })
	}()

	// Many calls; every thread must come back to the host namespace.
	for range 50 {
		if err := lb.Do(func() error { return nil }); err != nil {
			t.Fatalf("Do failed: %v", err)
		}
		if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != hostNS {
			t.Fatalf("calling thread is in %s after Do, want host %s", now, hostNS)
		}
	}
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, p := range tasks {
		if id, err := os.Readlink(p); err == nil && id != hostNS {
			t.Errorf("thread %s is still in namespace %s", p, id)
		}
	}

	for _, tt := range []struct {
		ns   *netlab.Namespace
		key  string
		want string
	}{
		{lb.Namespace, "net.ipv4.ip_forward", "1"},
		{lb.Namespace, "net/ipv6/conf/all/forwarding", "1"},
		{lb.Namespace, "net.ipv6.conf.default.accept_dad", "0"},
		{bed.Clients[0].Namespace, "net.ipv6.conf.eth0.accept_dad", "0"},
		{bed.Backends[0].Namespace, "net.ipv6.conf.all.forwarding", "0"},
	} {
		if got, err := tt.ns.Sysctl(tt.key); err != nil || got != tt.want {
			t.Errorf("%s: sysctl %s = %q, %v; want %q", tt.ns.Name(), tt.key, got, err, tt.want)
		}
	}
}

// TestHostUntouched checks that building and closing a test bed changes
// neither the host's links nor its forwarding sysctls.
func TestHostUntouched(t *testing.T) {
	requireRoot(t)
	keys := []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding", "/proc/sys/net/ipv6/conf/default/accept_dad"}
	read := func() (vals []string) {
		for _, k := range keys {
			b, err := os.ReadFile(k)
			if err != nil {
				t.Fatalf("failed to read %s: %v", k, err)
			}
			vals = append(vals, string(b))
		}
		return vals
	}
	links, sysctls := hostLinks(t), read()

	bed, err := netlab.New(testContext(t), netlab.Options{Clients: 2, Backends: 2})
	if err != nil {
		t.Fatalf("failed to build test bed: %v", err)
	}
	during, duringSysctls := hostLinks(t), read()
	if err := bed.Close(); err != nil {
		t.Fatalf("failed to close: %v", err)
	}
	if !slices.Equal(links, during) || !slices.Equal(links, hostLinks(t)) {
		t.Errorf("host links changed: before %v, during %v", links, during)
	}
	if !slices.Equal(sysctls, duringSysctls) || !slices.Equal(sysctls, read()) {
		t.Errorf("host sysctls %v changed: before %q, during %q", keys, sysctls, duringSysctls)
	}
}

func TestClose(t *testing.T) {
	requireRoot(t)
	for _, named := range []bool{false, true} {
		t.Run(fmt.Sprintf("named=%v", named), func(t *testing.T) {
			before := openNetNSFDs(t)
			bed, err := netlab.New(testContext(t), netlab.Options{Clients: 2, Backends: 2, Named: named, Prefix: "l4nft-test"})
			if err != nil {
				t.Fatalf("failed to build test bed: %v", err)
			}
			// A connection left open must not keep a namespace alive.
			if _, err := bed.Clients[0].Dial(testContext(t), "tcp", netip.AddrPortFrom(bed.Backends[0].Addr4, 80)); err != nil {
				t.Fatalf("failed to dial: %v", err)
			}
			var ids, paths []string
			for _, n := range bed.Namespaces() {
				ids = append(ids, nsID(t, n.Fd()))
				if named {
					want := fmt.Sprintf("l4nft-test-%s-%s", bed.ID, n.Name())
					if n.NetnsName() != want {
						t.Errorf("NetnsName() = %q, want %q", n.NetnsName(), want)
					}
					paths = append(paths, n.Path())
					if _, err := os.Stat(n.Path()); err != nil {
						t.Errorf("named namespace missing before Close: %v", err)
					}
				} else if n.NetnsName() != "" {
					t.Errorf("NetnsName() = %q, want none", n.NetnsName())
				}
			}
			if got, want := len(openNetNSFDs(t)), len(before)+len(ids); got != want {
				t.Errorf("%d namespace fds open, want %d", got, want)
			}

			if err := bed.Close(); err != nil {
				t.Fatalf("failed to close: %v", err)
			}
			if err := bed.Close(); err != nil {
				t.Errorf("second Close failed: %v", err)
			}
			if after := openNetNSFDs(t); !slices.Equal(after, before) {
				t.Errorf("namespace fds after Close: %v, want %v", after, before)
			}
			mounts, err := os.ReadFile("/proc/self/mountinfo")
			if err != nil {
				t.Fatalf("failed to read mounts: %v", err)
			}
			for _, p := range paths {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s still exists after Close (stat: %v)", p, err)
				}
				if strings.Contains(string(mounts), p) {
					t.Errorf("%s still mounted after Close", p)
				}
			}
			for _, n := range bed.Namespaces() {
				if n.Fd() != -1 {
					t.Errorf("%s: Fd() = %d after Close, want -1", n.Name(), n.Fd())
				}
				if err := n.Do(func() error { return nil }); !errors.Is(err, netlab.ErrClosed) {
					t.Errorf("%s: Do after Close returned %v, want ErrClosed", n.Name(), err)
				}
			}
			if _, err := bed.Clients[0].Ask(testContext(t), "tcp", netip.AddrPortFrom(bed.Backends[0].Addr4, 80)); !errors.Is(err, netlab.ErrClosed) {
				t.Errorf("Ask after Close returned %v, want ErrClosed", err)
			}
		})
	}
}

// TestNewFailure checks that a failed construction leaves nothing behind.
func TestNewFailure(t *testing.T) {
	requireRoot(t)
	// Namespace names are file names (at most 255 bytes): with this prefix
	// "<prefix>-<id>-lb" fits but "<prefix>-<id>-client0" does not, so New
	// fails after it created and mounted the balancer.
	longPrefix := "l4nft-test-" + strings.Repeat("x", 240-len("l4nft-test-"))
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()

	for _, tt := range []struct {
		name string
		ctx  context.Context
		opts netlab.Options
	}{
		{"too many backends", t.Context(), netlab.Options{Backends: netlab.MaxBackends + 1}},
		{"port 0", t.Context(), netlab.Options{Ports: []uint16{80, 0}}},
		{"name too long", t.Context(), netlab.Options{Named: true, Prefix: longPrefix}},
		{"cancelled", cancelled, netlab.Options{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := openNetNSFDs(t)
			bed, err := netlab.New(tt.ctx, tt.opts)
			if err == nil {
				bed.Close()
				t.Fatalf("New succeeded, want an error")
			}
			t.Logf("New: %v", err)
			if after := openNetNSFDs(t); !slices.Equal(after, before) {
				t.Errorf("namespace fds after failed New: %v, want %v", after, before)
			}
			leftovers, _ := filepath.Glob(filepath.Join(netlab.BindMountDir, longPrefix+"*"))
			if len(leftovers) > 0 {
				t.Errorf("named namespaces left behind: %v", leftovers)
			}
		})
	}
}

// TestNftablesFd checks that Namespace.Fd works with nftables.WithNetNSFd and
// that the table lands in that namespace only.
func TestNftablesFd(t *testing.T) {
	requireRoot(t)
	ns := namespaceForTest(t, "nft")
	conn, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatalf("failed to open nftables connection: %v", err)
	}
	name := "l4nft_netlab_" + strings.ReplaceAll(t.Name(), "/", "_")
	conn.AddTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	if err := conn.Flush(); err != nil {
		t.Fatalf("failed to add table: %v", err)
	}
	hasTable := func(c *nftables.Conn) bool {
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			t.Fatalf("failed to list tables: %v", err)
		}
		return slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == name })
	}
	if !hasTable(conn) {
		t.Errorf("table %s not found in namespace %s", name, ns.Name())
	}
	host, err := nftables.New()
	if err != nil {
		t.Fatalf("failed to open host nftables connection: %v", err)
	}
	if hasTable(host) {
		t.Errorf("table %s appeared in the host namespace", name)
		host.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet}) // undo our mistake
		if err := host.Flush(); err != nil {
			t.Errorf("failed to remove table %s from the host namespace: %v", name, err)
		}
	}
}

func TestEventually(t *testing.T) {
	ctx := testContext(t)
	n := 0
	if err := netlab.Eventually(ctx, time.Millisecond, func(context.Context) error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("Eventually = %v after %d calls, want nil after 3", err, n)
	}

	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	errNever := errors.New("never")
	err := netlab.Eventually(short, time.Millisecond, func(context.Context) error { return errNever })
	if !errors.Is(err, errNever) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Eventually = %v, want it to wrap both %v and %v", err, errNever, context.DeadlineExceeded)
	}
}
