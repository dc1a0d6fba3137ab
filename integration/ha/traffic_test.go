package ha

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// servers are a backend's TCP and UDP servers. The TCP server greets each
// connection with "<name> <peer>\n" and answers each line with "<name>\n";
// the UDP server answers each datagram with "<name> <peer>\n".
type servers struct {
	ln    net.Listener
	pc    net.PacketConn
	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startServers(ns *netNS, name string, port int) (*servers, error) {
	s := &servers{conns: map[net.Conn]bool{}}
	err := ns.Do(func() error {
		var err error
		if s.ln, err = net.Listen("tcp4", ":"+strconv.Itoa(port)); err != nil {
			return err
		}
		s.pc, err = net.ListenPacket("udp4", ":"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		if s.ln != nil {
			s.ln.Close()
		}
		return nil, fmt.Errorf("%s: listening: %w", name, err)
	}
	s.wg.Go(func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr())
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, name+"\n"); err != nil {
						return
					}
				}
			})
		}
	})
	s.wg.Go(func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := s.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.pc.WriteTo(fmt.Appendf(nil, "%s %s\n", name, from), from)
		}
	})
	return s, nil
}

func (s *servers) stop() {
	s.ln.Close()
	s.pc.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// flow is one long-lived TCP connection or UDP socket through the VIP that
// asks and waits for answers in a loop.
type flow struct {
	udp     bool
	key     flowKey
	backend string // from the greeting or the first answer
	source  string // the address the backend saw

	mu        sync.Mutex
	answers   int       // answered requests
	last      time.Time // the last answer
	maxGap    time.Duration
	gapStart  time.Time // when the longest gap started
	unanswerd int       // UDP requests without an answer in time
	err       error     // why the flow ended, if it did
	reset     bool      // the error was a TCP reset
	moved     string    // a different backend answered
}

// result sums up a set of flows.
type result struct {
	tcp, udp      int
	lost          int // flows that ended with an error or moved backend
	resets        int
	moved         int
	unanswered    int // UDP requests that went unanswered
	maxGap        time.Duration
	gaps          []time.Duration // per flow, sorted
	answers       int
	firstErr      error
	perBackend    map[string]int // flows per backend
	answersByBack map[string]int
}

func (r result) String() string {
	median := time.Duration(0)
	if len(r.gaps) > 0 {
		median = r.gaps[len(r.gaps)/2]
	}
	return fmt.Sprintf("%d TCP + %d UDP flows: %d lost (%d resets, %d moved to another backend), %d UDP requests unanswered, %d answers; longest time without answers %v (median over flows %v)",
		r.tcp, r.udp, r.lost, r.resets, r.moved, r.unanswered, r.answers, r.maxGap.Round(time.Millisecond), median.Round(time.Millisecond))
}

// load runs flows from the client namespace until stopped.
type load struct {
	flows  []*flow
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Timing of the flows' loops.
const (
	requestEvery = 100 * time.Millisecond
	udpWait      = 200 * time.Millisecond // then the request counts unanswered and is sent again
	tcpWait      = 30 * time.Second       // TCP retransmits by itself; this only bounds a dead flow
)

// startLoad opens nTCP connections and nUDP sockets to the VIP from the
// client namespace (failing the test if any cannot be opened) and keeps
// them asking until stop.
func startLoad(tb interface {
	Helper()
	Fatalf(string, ...any)
	Cleanup(func())
}, client *netNS, nTCP, nUDP int) *load {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	tb.Cleanup(l.stop)
	dst := netip.AddrPortFrom(vip, servicePort).String()
	var conns []net.Conn
	for i := range nTCP + nUDP {
		udp := i >= nTCP
		network := "tcp4"
		if udp {
			network = "udp4"
		}
		var c net.Conn
		err := client.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second}
			var err error
			c, err = d.Dial(network, dst)
			return err
		})
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			tb.Fatalf("failed to open flow %d (%s): %v", i, network, err)
		}
		conns = append(conns, c)
		f := &flow{udp: udp, key: flowKey{udp, netip.MustParseAddrPort(c.LocalAddr().String()).Port()}}
		if err := f.hello(c); err != nil {
			for _, c := range conns {
				c.Close()
			}
			tb.Fatalf("failed to greet on flow %d (%s): %v", i, network, err)
		}
		l.flows = append(l.flows, f)
	}
	for i, f := range l.flows {
		l.wg.Go(func() { f.loop(ctx, conns[i]) })
	}
	return l
}

// hello reads the greeting (TCP) or makes a first exchange (UDP).
func (f *flow) hello(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	var line string
	if f.udp {
		buf := make([]byte, 512)
		for range 10 {
			c.Write([]byte("hello\n"))
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, err := c.Read(buf)
			if err == nil {
				line = string(buf[:n])
				break
			}
		}
		if line == "" {
			return errors.New("no answer")
		}
	} else {
		var err error
		if line, err = bufio.NewReader(c).ReadString('\n'); err != nil {
			return err
		}
	}
	name, src, ok := strings.Cut(strings.TrimSpace(line), " ")
	if !ok {
		return fmt.Errorf("malformed greeting %q", line)
	}
	f.backend, f.source = name, src
	f.last = time.Now()
	return nil
}

func (f *flow) loop(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	r := bufio.NewReader(c)
	buf := make([]byte, 512)
	tick := time.NewTicker(requestEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		var name string
		var err error
		if f.udp {
			c.Write([]byte("ping\n"))
			c.SetReadDeadline(time.Now().Add(udpWait))
			var n int
			n, err = c.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
				f.mu.Lock()
				f.unanswerd++
				f.mu.Unlock()
				continue
			}
			name, _, _ = strings.Cut(string(buf[:n]), " ")
		} else {
			c.SetDeadline(time.Now().Add(tcpWait))
			if _, err = c.Write([]byte("ping\n")); err == nil {
				name, err = r.ReadString('\n')
				name = strings.TrimSpace(name)
			}
		}
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		f.mu.Lock()
		switch {
		case err != nil:
			f.err = err
			f.reset = errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
		case name != f.backend:
			f.moved = name
			f.err = fmt.Errorf("answered by %s, was %s", name, f.backend)
		default:
			f.answers++
			if g := now.Sub(f.last); g > f.maxGap {
				f.maxGap, f.gapStart = g, f.last
			}
			f.last = now
		}
		done := f.err != nil
		f.mu.Unlock()
		if done {
			return
		}
	}
}

// resetGaps forgets the gaps seen so far, so that the next result measures
// only what follows.
func (l *load) resetGaps() {
	for _, f := range l.flows {
		f.mu.Lock()
		f.maxGap, f.unanswerd = 0, 0
		f.mu.Unlock()
	}
}

// result sums up the flows so far.
func (l *load) result() result {
	r := result{perBackend: map[string]int{}, answersByBack: map[string]int{}}
	for _, f := range l.flows {
		f.mu.Lock()
		if f.udp {
			r.udp++
		} else {
			r.tcp++
		}
		r.perBackend[f.backend]++
		r.answersByBack[f.backend] += f.answers
		r.answers += f.answers
		r.unanswered += f.unanswerd
		gap := max(f.maxGap, time.Since(f.last)-requestEvery) // a flow still waiting has a gap too
		if f.err != nil {
			r.lost++
			if r.firstErr == nil {
				r.firstErr = f.err
			}
			gap = f.maxGap
		}
		if f.reset {
			r.resets++
		}
		if f.moved != "" {
			r.moved++
		}
		r.gaps = append(r.gaps, gap)
		r.maxGap = max(r.maxGap, gap)
		f.mu.Unlock()
	}
	slices.Sort(r.gaps)
	return r
}

// stop ends every flow and waits for them.
func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

// waitAnswers waits until every flow still running answered after since, at
// most timeout.
func (l *load) waitAnswers(since time.Time, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		waiting := 0
		for _, f := range l.flows {
			f.mu.Lock()
			if f.err == nil && !f.last.After(since) {
				waiting++
			}
			f.mu.Unlock()
		}
		if waiting == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d flows got no answer within %v", waiting, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spread makes n short TCP connections to the VIP, conc at a time, and
// counts the backends that answered. Each connection has dialTimeout to
// succeed (the kernel retransmits a lost SYN after 1 s, then 3 s).
func spread(ctx context.Context, client *netNS, n, conc int, dialTimeout time.Duration) (map[string]int, int, error) {
	counts := map[string]int{}
	var (
		mu       sync.Mutex
		errs     int
		firstErr error
		wg       sync.WaitGroup
		next     = make(chan struct{}, n)
	)
	for range n {
		next <- struct{}{}
	}
	close(next)
	dst := netip.AddrPortFrom(vip, servicePort).String()
	for range conc {
		wg.Go(func() {
			for range next {
				if ctx.Err() != nil {
					return
				}
				name, err := ask(client, dst, dialTimeout)
				mu.Lock()
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
				} else {
					counts[name]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return counts, errs, firstErr
}

// ask opens one TCP connection to dst and returns the greeting's backend.
func ask(client *netNS, dst string, timeout time.Duration) (string, error) {
	var c net.Conn
	err := client.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp4", dst)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	name, _, _ := strings.Cut(line, " ")
	return name, nil
}
