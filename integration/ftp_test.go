package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// ftpServer is a minimal passive-mode FTP server on one backend: USER,
// PASS, TYPE, PASV, RETR and QUIT, enough for a client to fetch a file.
// Its PASV reply announces the backend's own address, as a server behind
// a NAT balancer does.
type ftpServer struct {
	name       string
	addr       netip.Addr
	ctrl, data *net.TCPListener

	mu        sync.Mutex
	dataPeers []netip.AddrPort // whence the data connections came
}

// ftpPayload is what the server of backend name sends on a data
// connection.
func ftpPayload(name string) string { return "the file served by " + name + "\n" }

// startFTP starts an FTP server inside the backend's namespace, on its
// address, port 21, with a passive data port of the kernel's choosing.
func startFTP(t *testing.T, be *testbed.Backend) *ftpServer {
	t.Helper()
	s := &ftpServer{name: be.Name(), addr: be.Addr4}
	err := be.Do(func() error {
		ctrl, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(be.Addr4, 21)))
		if err != nil {
			return err
		}
		data, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.AddrPortFrom(be.Addr4, 0)))
		if err != nil {
			ctrl.Close()
			return err
		}
		s.ctrl, s.data = ctrl, data
		return nil
	})
	if err != nil {
		t.Fatalf("%s: starting the FTP server: %v", be.Name(), err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		s.ctrl.Close()
		s.data.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := s.ctrl.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { s.serve(c) })
		}
	})
	return s
}

func (s *ftpServer) dataPort() uint16 { return uint16(s.data.Addr().(*net.TCPAddr).Port) }

func (s *ftpServer) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	reply := func(format string, args ...any) { fmt.Fprintf(c, format+"\r\n", args...) }
	reply("220 %s ready", s.name)
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch strings.ToUpper(cmd) {
		case "USER":
			reply("331 password please")
		case "PASS":
			reply("230 logged in")
		case "TYPE":
			reply("200 type set")
		case "PASV":
			a, p := s.addr.As4(), s.dataPort()
			reply("227 Entering Passive Mode (%d,%d,%d,%d,%d,%d)", a[0], a[1], a[2], a[3], p>>8, p&0xff)
		case "RETR":
			s.data.SetDeadline(time.Now().Add(5 * time.Second))
			dc, err := s.data.Accept()
			if err != nil {
				reply("425 no data connection: %v", err)
				continue
			}
			s.mu.Lock()
			s.dataPeers = append(s.dataPeers, dc.RemoteAddr().(*net.TCPAddr).AddrPort())
			s.mu.Unlock()
			reply("150 opening data connection")
			io.WriteString(dc, ftpPayload(s.name))
			dc.Close()
			reply("226 transfer complete")
		case "QUIT":
			reply("221 bye")
			return
		default:
			reply("502 %s not implemented", cmd)
		}
	}
}

// ftpClient is the client side of a control connection.
type ftpClient struct {
	c    *testbed.Client
	conn net.Conn
	r    *bufio.Reader
}

// dialFrom makes a TCP connection from the client's namespace within wait.
func dialFrom(c *testbed.Client, dst netip.AddrPort, wait time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var conn net.Conn
	err := c.Do(func() (err error) {
		var d net.Dialer
		conn, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	})
	return conn, err
}

// ftpLogin connects to dst, reads the greeting (which names the backend)
// and logs in.
func ftpLogin(t *testing.T, c *testbed.Client, dst netip.AddrPort) (*ftpClient, string) {
	t.Helper()
	conn, err := dialFrom(c, dst, 5*time.Second)
	if err != nil {
		t.Fatalf("FTP control connection to %s: %v", dst, err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	f := &ftpClient{c: c, conn: conn, r: bufio.NewReader(conn)}
	greeting := f.expect(t, "", "220")
	backend, _, _ := strings.Cut(strings.TrimPrefix(greeting, "220 "), " ")
	f.expect(t, "USER anonymous", "331")
	f.expect(t, "PASS guest", "230")
	f.expect(t, "TYPE I", "200")
	return f, backend
}

// expect sends cmd (if any) and reads one reply, which must have code.
func (f *ftpClient) expect(t *testing.T, cmd, code string) string {
	t.Helper()
	if cmd != "" {
		if _, err := fmt.Fprintf(f.conn, "%s\r\n", cmd); err != nil {
			t.Fatalf("FTP: sending %s: %v", cmd, err)
		}
	}
	line, err := f.r.ReadString('\n')
	line = strings.TrimRight(line, "\r\n")
	if err != nil || !strings.HasPrefix(line, code+" ") {
		t.Fatalf("FTP: %q got %q (%v), want a %s reply", cmd, line, err, code)
	}
	return line
}

var pasvReply = regexp.MustCompile(`\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)`)

// pasv asks for passive mode and returns the address announced.
func (f *ftpClient) pasv(t *testing.T) netip.AddrPort {
	t.Helper()
	line := f.expect(t, "PASV", "227")
	m := pasvReply.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("FTP: unparsable PASV reply %q", line)
	}
	var n [6]byte
	for i := range n {
		v, err := strconv.Atoi(m[i+1])
		if err != nil || v > 255 {
			t.Fatalf("FTP: PASV reply %q: field %d out of range", line, i+1)
		}
		n[i] = byte(v)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(n[:4])), uint16(n[4])<<8|uint16(n[5]))
}

// retrieve fetches a file over an open data connection.
func (f *ftpClient) retrieve(t *testing.T, data net.Conn) string {
	t.Helper()
	defer data.Close()
	f.expect(t, "RETR file", "150")
	data.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(data)
	if err != nil {
		t.Fatalf("FTP: reading the data connection: %v", err)
	}
	f.expect(t, "", "226")
	return string(got)
}

// isolateBackends makes the backends private, as behind a real balancer:
// the test bed's balancer routes between clients and backends, so without
// this a client could reach a backend's own address directly. Clients may
// reach a backend only through a connection the balancer translated (a
// farm's, or one a helper expects): the forward hook drops what a client
// sent to a backend's address itself.
func isolateBackends(t *testing.T, bed *testbed.Topology) {
	t.Helper()
	runNft(t, bed.Balancer.Namespace, fmt.Appendf(nil, `table ip test_private_backends {
	chain forward {
		type filter hook forward priority 0; policy accept;
		iifname %q ct original ip daddr %s drop
	}
}
`, testbed.ClientBridge, testbed.BackendPrefix4), "-f", "-")
	if _, err := dialFrom(bed.Clients[0], ap(bed.Backends[0].Addr4, 80), dropWait); err == nil {
		t.Fatalf("a client still reaches %s directly", bed.Backends[0].Addr4)
	}
}

// FTP through a farm, in NAT and in DNAT mode: the backend's passive-mode
// reply announces its own address, which a client cannot reach. Without
// a helper the client gets that address and its data connection fails;
// with helpers: [ftp], nf_nat_ftp rewrites the reply to announce the VIP,
// the client's data connection to the VIP reaches the backend that holds
// the control connection (whatever the scheduler would choose), from the
// address the farm's mode gives (the balancer's, or the client's own), and
// the file arrives.
func TestFTPHelperRewritesPassiveReply(t *testing.T) {
	for _, mode := range []lb.Mode{lb.NAT, lb.DNAT} {
		t.Run(mode.String(), func(t *testing.T) { testFTPHelper(t, mode) })
	}
}

func testFTPHelper(t *testing.T, mode lb.Mode) {
	bed := mustBed(t, testbed.Options{Backends: 2})
	servers := map[string]*ftpServer{}
	for _, be := range bed.Backends {
		servers[be.Name()] = startFTP(t, be)
	}
	isolateBackends(t, bed)
	b := mustOpen(t, bed, lb.Options{})
	f := farm("ftp", vip4, 21, mode, backendsOf(bed, false, 21, 1, 1))
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	c := bed.Clients[0]
	dataFrom := bed.Balancer.BackendAddr4
	if mode == lb.DNAT {
		dataFrom = c.Addr4
	}

	// Without the helper.
	ftp, backend := ftpLogin(t, c, ap(vip4, 21))
	srv := servers[backend]
	if srv == nil {
		t.Fatalf("FTP greeting names %q, not a backend", backend)
	}
	announced := ftp.pasv(t)
	t.Logf("without the helper, %s announces %s", backend, announced)
	if want := netip.AddrPortFrom(srv.addr, srv.dataPort()); announced != want {
		t.Errorf("without the helper, PASV announced %s, want the backend's own %s (untouched)", announced, want)
	}
	if data, err := dialFrom(c, announced, dropWait); err == nil {
		data.Close()
		t.Errorf("without the helper, the client reached the backend's own address %s", announced)
	}
	if data, err := dialFrom(c, ap(vip4, announced.Port()), dropWait); err == nil {
		data.Close()
		t.Errorf("without the helper, the client reached the VIP at the announced port %d", announced.Port())
	}
	ftp.conn.Close()

	// With it.
	f.Helpers = []lb.Helper{lb.FTP}
	if _, err := b.SetFarm(testContext(t), f); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for i := range 6 {
		ftp, backend := ftpLogin(t, c, ap(vip4, 21))
		srv := servers[backend]
		if srv == nil {
			t.Fatalf("FTP greeting names %q, not a backend", backend)
		}
		seen[backend]++
		announced := ftp.pasv(t)
		if i == 0 {
			t.Logf("with the helper, %s's reply reaches the client announcing %s", backend, announced)
		}
		if announced.Addr() != vip4 {
			t.Fatalf("session %d: with the ftp helper, PASV announced %s, want the VIP %s", i+1, announced, vip4)
		}
		data, err := dialFrom(c, announced, 5*time.Second)
		if err != nil {
			t.Fatalf("session %d: data connection to the announced %s: %v", i+1, announced, err)
		}
		if got, want := ftp.retrieve(t, data), ftpPayload(backend); got != want {
			t.Errorf("session %d: control connection on %s, file %q, want %q: the data connection went elsewhere", i+1, backend, got, want)
		}
		ftp.expect(t, "QUIT", "221")
		ftp.conn.Close()
	}
	for name, s := range servers {
		s.mu.Lock()
		if len(s.dataPeers) != seen[name] {
			t.Errorf("%s accepted %d data connections, for %d sessions", name, len(s.dataPeers), seen[name])
		}
		for _, p := range s.dataPeers {
			if p.Addr() != dataFrom {
				t.Errorf("%s: data connection from %s, want %s (%s mode)", name, p, dataFrom, mode)
			}
		}
		s.mu.Unlock()
	}
	t.Logf("sessions per backend: %v", seen)
}
