package netlab

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// servers are a backend's TCP and UDP servers.
type servers struct {
	opMu sync.Mutex // serialises start and stop

	mu      sync.Mutex
	running bool
	closers []io.Closer // listeners and packet connections
	conns   map[net.Conn]struct{}

	wg sync.WaitGroup
}

// StartServers starts the backend's TCP and UDP servers on every port in
// Ports, IPv4 and IPv6, with sockets created inside the backend's namespace.
// New starts them; call this after StopServers. Starting running servers is
// a no-op.
func (b *Backend) StartServers() error {
	s := &b.srv
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	running := s.running
	s.mu.Unlock()
	if running {
		return nil
	}

	var (
		listeners []net.Listener
		packets   []*net.UDPConn
	)
	err := b.Do(func() error {
		for _, port := range b.Ports {
			p := strconv.Itoa(int(port))
			for _, network := range []string{"tcp4", "tcp6"} {
				l, err := net.Listen(network, net.JoinHostPort(wildcard(network), p))
				if err != nil {
					return fmt.Errorf("listening on %s port %s: %w", network, p, err)
				}
				listeners = append(listeners, l)
			}
			for _, network := range []string{"udp4", "udp6"} {
				pc, err := net.ListenPacket(network, net.JoinHostPort(wildcard(network), p))
				if err != nil {
					return fmt.Errorf("listening on %s port %s: %w", network, p, err)
				}
				packets = append(packets, pc.(*net.UDPConn))
			}
		}
		return nil
	})
	if err != nil {
		for _, l := range listeners {
			l.Close()
		}
		for _, pc := range packets {
			pc.Close()
		}
		return fmt.Errorf("%s: starting servers: %w", b.Name(), err)
	}

	s.mu.Lock()
	s.running = true
	s.conns = map[net.Conn]struct{}{}
	s.closers = s.closers[:0]
	for _, l := range listeners {
		s.closers = append(s.closers, l)
		s.wg.Go(func() { s.acceptLoop(b.Name(), l) })
	}
	for _, pc := range packets {
		s.closers = append(s.closers, pc)
		s.wg.Go(func() { serveUDP(b.Name(), pc) })
	}
	s.mu.Unlock()
	return nil
}

// StopServers closes the backend's listening sockets and every connection
// they accepted, as if the server process had died, and waits until the
// server goroutines have returned. New connections are refused until
// StartServers. Stopping stopped servers is a no-op.
func (b *Backend) StopServers() {
	s := &b.srv
	s.opMu.Lock()
	defer s.opMu.Unlock()
	s.mu.Lock()
	s.running = false
	for _, c := range s.closers {
		c.Close()
	}
	s.closers = nil
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// Serving reports whether the backend's servers are running.
func (b *Backend) Serving() bool {
	b.srv.mu.Lock()
	defer b.srv.mu.Unlock()
	return b.srv.running
}

func wildcard(network string) string {
	if network[len(network)-1] == '6' {
		return "::"
	}
	return "0.0.0.0"
}

func (s *servers) acceptLoop(name string, l net.Listener) {
	for {
		c, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE; retry until closed
			continue
		}
		s.mu.Lock()
		if !s.running {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Go(func() {
			serveTCP(name, c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		})
		s.mu.Unlock()
	}
}

// serveTCP greets with "<name> <remote>\n", then answers every line with
// "<name>\n" until the peer closes or the connection is closed.
func serveTCP(name string, c net.Conn) {
	defer c.Close()
	if _, err := fmt.Fprintf(c, "%s %s\n", name, addrPort(c.RemoteAddr())); err != nil {
		return
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if _, err := io.WriteString(c, name+"\n"); err != nil {
			return
		}
	}
}

// serveUDP answers every datagram with "<name> <remote>\n" until pc is closed.
func serveUDP(name string, pc *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := pc.ReadFromUDPAddrPort(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			time.Sleep(10 * time.Millisecond) // retry until closed
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		pc.WriteToUDPAddrPort(fmt.Appendf(nil, "%s %s\n", name, from), from)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
