package integration_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
)

// allProtocols is a farm of every protocol on vip: no ports, and backends
// that keep the port the client connected to.
func allProtocols(name string, vip netip.Addr, mode lb.Mode, backends []lb.Backend) lb.Farm {
	return lb.Farm{Name: name, Address: vip, Protocol: lb.AllProtocols, Mode: mode, Backends: backends}
}

// A farm of protocol all carries TCP on two ports, UDP and (IPv4, raw
// packets) SCTP to its backends, each on the port the client chose.
func TestAllProtocolsFarmCarriesEveryProtocol(t *testing.T) {
	tests := []struct {
		name string
		vip  netip.Addr
		v6   bool
		mode lb.Mode
	}{
		{"ipv4 nat", vip4, false, lb.NAT},
		{"ipv6 dnat", vip6, true, lb.DNAT},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{Ports: []uint16{80, 8080}})
			b := mustOpen(t, bed, lb.Options{})
			mustApply(t, b, lb.State{Farms: []lb.Farm{allProtocols("any", tt.vip, tt.mode, backendsOf(bed, tt.v6, 0, 1, 2))}})
			c, n := bed.Clients[0], names(bed, 2)
			for _, dst := range []struct {
				network string
				port    uint16
			}{{"tcp", 80}, {"tcp", 8080}, {"udp", 80}, {"udp", 8080}} {
				assertSplit(t, spreadOf(t, c, dst.network, ap(tt.vip, dst.port), 300, 8), n, []int{1, 2})
			}
			if tt.v6 {
				return // the raw SCTP peers below speak IPv4
			}
			sctp := newSCTPBed(t, bed)
			var last []sctpArrival
			assertSplit(t, func() testbed.SpreadResult {
				var res testbed.SpreadResult
				res, last = sctp.spread(t, ap(tt.vip, 2905), 300)
				return res
			}, n, []int{1, 2})
			for _, a := range last {
				if a.seen.dstPort != 2905 || !a.seen.checksumOK {
					t.Fatalf("SCTP INIT reached %s on port %d (checksum ok: %t), want port 2905 kept and a valid checksum", a.backend, a.seen.dstPort, a.seen.checksumOK)
				}
			}
		})
	}
}

// A farm of ports on the address of a farm of protocol all takes its
// ports, for its protocol only, whichever was installed first; the farm of
// protocol all takes the rest, and port 80 again once the other farm goes.
func TestPortFarmTakesPrecedenceOverAllProtocolsFarm(t *testing.T) {
	bed := mustBed(t, testbed.Options{Backends: 3, Ports: []uint16{80, 8080}})
	b := mustOpen(t, bed, lb.Options{})
	all := backendsOf(bed, false, 0, 1, 1, 1)
	n := names(bed, 3)
	c := bed.Clients[0]
	ctx := testContext(t)
	mustApply(t, b, lb.State{Farms: []lb.Farm{allProtocols("rest", vip4, lb.NAT, all[1:3])}})
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 80), 300, 8), n[1:3], []int{1, 1})

	// Added second, the port farm still wins its port.
	if _, err := b.SetFarm(ctx, farm("web", vip4, 80, lb.NAT, all[0:1])); err != nil {
		t.Fatalf("failed to add the port farm: %v", err)
	}
	if res := c.Spread(ctx, "tcp", ap(vip4, 80), 200, 8); res.Errors > 0 || res.Counts[n[0]] != 200 {
		t.Errorf("tcp port 80 with farm web there: want every connection on %s, got %s", n[0], res)
	}
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 8080), 300, 8), n[1:3], []int{1, 1})
	assertSplit(t, spreadOf(t, c, "udp", ap(vip4, 80), 300, 8), n[1:3], []int{1, 1})

	if _, err := b.RemoveFarm(ctx, "web"); err != nil {
		t.Fatalf("failed to remove the port farm: %v", err)
	}
	assertSplit(t, spreadOf(t, c, "tcp", ap(vip4, 80), 300, 8), n[1:3], []int{1, 1})
}

// SCTP through the balancer, with raw packets, on a kernel that tracks and
// NATs SCTP (CONFIG_NF_CT_PROTO_SCTP) but has no SCTP sockets
// (CONFIG_IP_SCTP): the client and the backends speak the first two
// chunks of the handshake themselves. INITs are split by weight, reach
// the backend's port with a checksum the balancer recomputed, and the
// backend's INIT ACK comes back to the client from the VIP's port.
func TestSCTPIsBalancedAndNATed(t *testing.T) {
	tests := []struct {
		name       string
		mode       lb.Mode
		wantSource func(bed *testbed.Topology) netip.Addr
	}{
		{"nat", lb.NAT, func(bed *testbed.Topology) netip.Addr { return bed.Balancer.BackendAddr4 }},
		{"dnat", lb.DNAT, func(bed *testbed.Topology) netip.Addr { return bed.Clients[0].Addr4 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bed := mustBed(t, testbed.Options{})
			if ok, _ := sctpSockets(t, bed.Clients[0].Namespace); ok {
				// The kernel's SCTP stack would answer the raw INITs with
				// ABORTs, which end the connections in conntrack.
				t.Skip("this kernel has SCTP sockets, whose stack answers raw INITs; TestSCTPAssociation covers SCTP")
			}
			b := mustOpen(t, bed, lb.Options{})
			f := farm("sig", vip4, 2905, tt.mode, backendsOf(bed, false, 2906, 1, 2))
			f.Protocol = lb.SCTP
			mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
			sctp := newSCTPBed(t, bed)

			var last []sctpArrival
			assertSplit(t, func() testbed.SpreadResult {
				var res testbed.SpreadResult
				res, last = sctp.spread(t, ap(vip4, 2905), 300)
				return res
			}, names(bed, 2), []int{1, 2})
			for _, a := range last {
				if a.seen.from != tt.wantSource(bed) || a.seen.dstPort != 2906 || !a.seen.checksumOK {
					t.Fatalf("INIT reached %s from %s to port %d (checksum ok: %t); want from %s to port 2906 with a valid checksum",
						a.backend, a.seen.from, a.seen.dstPort, a.seen.checksumOK, tt.wantSource(bed))
				}
			}

			// One backend answers one INIT; the answer is un-NATed on its
			// way back.
			a := last[0]
			ackTag := rand.Uint32() | 1
			ack := sctpPacket(a.seen.dstPort, a.seen.srcPort, a.seen.initTag, initChunk(sctpInitAck, ackTag))
			if err := sctp.backends[a.backend].send(a.seen.from, ack); err != nil {
				t.Fatalf("failed to send INIT ACK from %s: %v", a.backend, err)
			}
			got, err := sctp.client.receive(testContext(t), func(s sctpSeen) bool { return s.chunk == sctpInitAck && s.vtag == a.clientTag })
			if err != nil {
				t.Fatalf("INIT ACK from %s did not reach the client: %v", a.backend, err)
			}
			if got.from != vip4 || got.srcPort != 2905 || got.dstPort != a.clientPort || got.initTag != ackTag || !got.checksumOK {
				t.Errorf("client got INIT ACK %+v; want it from %s port 2905 to port %d with tag %#x and a valid checksum", got, vip4, a.clientPort, ackTag)
			}
		})
	}
}

// A real SCTP association through the balancer, when the kernel has SCTP
// sockets.
func TestSCTPAssociation(t *testing.T) {
	requireRoot(t)
	requireSCTPSockets(t, testbed.NamespaceForTest(t, "sctp-probe"))
	bed := mustBed(t, testbed.Options{})
	b := mustOpen(t, bed, lb.Options{})
	f := farm("sig", vip4, 2905, lb.NAT, backendsOf(bed, false, 2906, 1, 2))
	f.Protocol = lb.SCTP
	mustApply(t, b, lb.State{Farms: []lb.Farm{f}})
	for _, be := range bed.Backends[:2] {
		mustServeSCTP(t, be.Namespace, 2906)
	}
	assertSplit(t, func() testbed.SpreadResult {
		res := testbed.SpreadResult{Counts: map[string]int{}}
		for range 300 {
			name, err := askSCTP(bed.Clients[0].Namespace, ap(vip4, 2905))
			if err != nil {
				res.Errors++
				if res.Err == nil {
					res.Err = err
				}
				continue
			}
			res.Counts[name]++
		}
		return res
	}, names(bed, 2), []int{1, 2})
}

// sctpSockets reports whether the kernel makes SCTP sockets (in ns), and
// why not.
func sctpSockets(t *testing.T, ns *testbed.Namespace) (bool, error) {
	t.Helper()
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
		if err == nil {
			unix.Close(fd)
		}
		return err
	})
	switch {
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ESOCKTNOSUPPORT):
		return false, err
	case err != nil:
		t.Fatalf("failed to make an SCTP socket: %v", err)
	}
	return true, nil
}

// requireSCTPSockets skips the test unless the kernel makes SCTP sockets.
func requireSCTPSockets(t *testing.T, ns *testbed.Namespace) {
	t.Helper()
	if ok, err := sctpSockets(t, ns); !ok {
		t.Skipf("SCTP sockets are not supported by this kernel (CONFIG_IP_SCTP): %v; TestSCTPIsBalancedAndNATed covers SCTP with raw packets", err)
	}
}

// mustServeSCTP answers every SCTP association on port with the
// namespace's name, as the test bed's TCP servers do, until the test ends.
func mustServeSCTP(t *testing.T, ns *testbed.Namespace, port int) {
	t.Helper()
	var fd int
	err := ns.Do(func() (err error) {
		if fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP); err != nil {
			return err
		}
		if err = unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err == nil {
			err = unix.Listen(fd, 128)
		}
		if err != nil {
			unix.Close(fd)
		}
		return err
	})
	if err != nil {
		t.Fatalf("failed to listen for SCTP in %s: %v", ns.Name(), err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; unix.Close(fd) })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			// Poll with a timeout: a close does not wake a blocked accept.
			ready, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100)
			if err != nil && !errors.Is(err, unix.EINTR) {
				return
			}
			if ready == 0 {
				continue
			}
			c, _, err := unix.Accept(fd)
			if err != nil {
				continue
			}
			unix.Write(c, []byte(ns.Name()+"\n"))
			unix.Close(c)
		}
	}()
}

// askSCTP makes one SCTP association from ns to dst and returns the first
// word the server sent.
func askSCTP(ns *testbed.Namespace, dst netip.AddrPort) (string, error) {
	var name string
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		timeout := unix.NsecToTimeval(int64(5 * time.Second))
		for _, opt := range []int{unix.SO_SNDTIMEO, unix.SO_RCVTIMEO} {
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &timeout); err != nil {
				return err
			}
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := unix.Read(fd, buf)
		if err != nil {
			return err
		}
		name = string(buf[:max(n, 0)])
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("SCTP association to %s: %w", dst, err)
	}
	var word string
	fmt.Sscan(name, &word)
	return word, nil
}

// SCTP chunk types (RFC 9260, 3.2).
const (
	sctpInit    = 1
	sctpInitAck = 2
)

// sctpPacket returns an SCTP packet, common header and one chunk, with
// its CRC32c checksum (RFC 9260, appendix A: stored least significant
// byte first).
func sctpPacket(srcPort, dstPort uint16, vtag uint32, chunk []byte) []byte {
	p := make([]byte, 12, 12+len(chunk))
	binary.BigEndian.PutUint16(p[0:], srcPort)
	binary.BigEndian.PutUint16(p[2:], dstPort)
	binary.BigEndian.PutUint32(p[4:], vtag)
	p = append(p, chunk...)
	binary.LittleEndian.PutUint32(p[8:], crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)))
	return p
}

// initChunk returns an INIT or INIT ACK chunk with initiate tag tag; an
// INIT ACK carries the state cookie it must have.
func initChunk(typ byte, tag uint32) []byte {
	c := make([]byte, 20)
	c[0] = typ
	binary.BigEndian.PutUint32(c[4:], tag)
	binary.BigEndian.PutUint32(c[8:], 65535) // a_rwnd
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], tag)  // initial TSN
	if typ == sctpInitAck {
		c = append(c, 0, 7, 0, 8, 'l', '4', 'n', 'f') // state cookie parameter
	}
	binary.BigEndian.PutUint16(c[2:], uint16(len(c)))
	return c
}

// sctpSeen is an SCTP packet as a peer received it.
type sctpSeen struct {
	from             netip.Addr
	srcPort, dstPort uint16
	vtag             uint32
	chunk            byte   // the first chunk's type
	initTag          uint32 // of an INIT or INIT ACK
	checksumOK       bool
}

func parseSCTP(from netip.Addr, p []byte) (sctpSeen, bool) {
	if len(p) < 20 {
		return sctpSeen{}, false
	}
	s := sctpSeen{
		from:    from,
		srcPort: binary.BigEndian.Uint16(p[0:]), dstPort: binary.BigEndian.Uint16(p[2:]),
		vtag: binary.BigEndian.Uint32(p[4:]), chunk: p[12],
	}
	if s.chunk == sctpInit || s.chunk == sctpInitAck {
		s.initTag = binary.BigEndian.Uint32(p[16:])
	}
	sum := binary.LittleEndian.Uint32(p[8:])
	zeroed := append([]byte(nil), p...)
	clear(zeroed[8:12])
	s.checksumOK = crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)) == sum
	return s, true
}

// sctpPeer sends and receives SCTP packets over a raw IPv4 socket in a
// namespace, without the kernel's SCTP stack: the kernel hands every
// packet of IP protocol 132 to the raw socket and, having given it to
// one, answers none itself.
type sctpPeer struct{ conn net.PacketConn }

func mustSCTPPeer(t *testing.T, ns *testbed.Namespace) *sctpPeer {
	t.Helper()
	var c net.PacketConn
	err := ns.Do(func() (err error) {
		c, err = net.ListenPacket("ip4:132", "0.0.0.0")
		return err
	})
	if err != nil {
		t.Fatalf("failed to open a raw SCTP socket in %s: %v", ns.Name(), err)
	}
	t.Cleanup(func() { c.Close() })
	return &sctpPeer{conn: c}
}

func (p *sctpPeer) send(dst netip.Addr, packet []byte) error {
	_, err := p.conn.WriteTo(packet, &net.IPAddr{IP: dst.AsSlice()})
	return err
}

// receive returns the first packet that match accepts, or fails when ctx
// is done.
func (p *sctpPeer) receive(ctx context.Context, match func(sctpSeen) bool) (sctpSeen, error) {
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		// A second at most, so that ctx is looked at again.
		p.conn.SetReadDeadline(time.Now().Add(time.Second))
		n, from, err := p.conn.ReadFrom(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return sctpSeen{}, err
		}
		a, _ := netip.AddrFromSlice(from.(*net.IPAddr).IP)
		if s, ok := parseSCTP(a.Unmap(), buf[:n]); ok && match(s) {
			return s, nil
		}
	}
	return sctpSeen{}, ctx.Err()
}

// sctpArrival is an INIT a backend received, and the client's port and
// tag it was sent with.
type sctpArrival struct {
	backend    string
	seen       sctpSeen
	clientPort uint16
	clientTag  uint32
}

// sctpBed is a raw SCTP peer in the first client and in each backend of
// a test bed, the backends' listening until the test ends.
type sctpBed struct {
	client   *sctpPeer
	backends map[string]*sctpPeer
	arrivals chan sctpArrival
	// nextPort is the client's next source port: each INIT is a new
	// connection to conntrack.
	nextPort uint16
}

func newSCTPBed(t *testing.T, bed *testbed.Topology) *sctpBed {
	t.Helper()
	ctx := testContext(t)
	s := &sctpBed{client: mustSCTPPeer(t, bed.Clients[0].Namespace), backends: map[string]*sctpPeer{},
		arrivals: make(chan sctpArrival, 1024), nextPort: 20000}
	for _, be := range bed.Backends {
		peer, name := mustSCTPPeer(t, be.Namespace), be.Name()
		s.backends[name] = peer
		go func() {
			for {
				seen, err := peer.receive(ctx, func(s sctpSeen) bool { return s.chunk == sctpInit })
				if err != nil {
					return
				}
				select {
				case s.arrivals <- sctpArrival{backend: name, seen: seen}:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return s
}

// spread sends n INITs to dst, each from a new port with a new tag, and
// counts the backends they reached; an INIT that reached none within 5 s
// is an error.
func (s *sctpBed) spread(t *testing.T, dst netip.AddrPort, n int) (testbed.SpreadResult, []sctpArrival) {
	t.Helper()
	res := testbed.SpreadResult{Counts: map[string]int{}}
	sent := map[uint32]uint16{} // tag -> client port
	for range n {
		tag, port := rand.Uint32()|1, s.nextPort
		s.nextPort++
		sent[tag] = port
		if err := s.client.send(dst.Addr(), sctpPacket(port, dst.Port(), 0, initChunk(sctpInit, tag))); err != nil {
			t.Fatalf("failed to send INIT to %s: %v", dst, err)
		}
	}
	ctx, cancel := context.WithTimeout(testContext(t), 5*time.Second)
	defer cancel()
	var got []sctpArrival
	for len(got) < n {
		select {
		case a := <-s.arrivals:
			port, ok := sent[a.seen.initTag]
			if !ok {
				continue // from an earlier spread
			}
			delete(sent, a.seen.initTag)
			a.clientPort, a.clientTag = port, a.seen.initTag
			res.Counts[a.backend]++
			got = append(got, a)
		case <-ctx.Done():
			res.Errors = len(sent)
			res.Err = fmt.Errorf("%d of %d INITs to %s reached no backend within 5 s", len(sent), n, dst)
			return res, got
		}
	}
	return res, got
}
