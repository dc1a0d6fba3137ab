package netlab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Reply is a backend's greeting: which backend answered and the source
// address it saw.
type Reply struct {
	Backend string
	Source  netip.AddrPort
}

func (r Reply) String() string { return r.Backend + " " + r.Source.String() }

func parseReply(line string) (Reply, error) {
	name, src, ok := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if !ok {
		return Reply{}, fmt.Errorf("malformed reply %q", line)
	}
	ap, err := netip.ParseAddrPort(src)
	if err != nil {
		return Reply{}, fmt.Errorf("malformed reply %q: %w", line, err)
	}
	return Reply{Backend: name, Source: ap}, nil
}

// UDP requests are retried this many times, each waiting this long at most.
const (
	udpAttempts = 3
	udpWait     = time.Second
)

// Ask connects from the client's namespace to dst over network ("tcp",
// "tcp4", "tcp6", "udp", "udp4" or "udp6"), reads the backend's greeting
// (for UDP: sends one datagram and reads the answer), and closes the
// connection. ctx bounds everything (DefaultTimeout if it has no deadline).
func (c *Client) Ask(ctx context.Context, network string, dst netip.AddrPort) (Reply, error) {
	conn, err := c.Dial(ctx, network, dst)
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	return conn.First(), nil
}

// Conn is a connection from a client to a backend (usually through a VIP),
// kept open for several round trips. It is not safe for concurrent use.
type Conn struct {
	client  *Client
	nc      net.Conn
	r       *bufio.Reader
	udp     bool
	first   Reply
	network string
	dst     netip.AddrPort
}

// Dial opens a connection like Ask but keeps it open. Topology.Close closes
// connections left open. ctx bounds the dial and the greeting only.
func (c *Client) Dial(ctx context.Context, network string, dst netip.AddrPort) (*Conn, error) {
	return c.DialFrom(ctx, network, 0, dst)
}

// AskFrom is Ask from a given source port, so that a test can make the
// same flow again: over UDP the balancer keeps choosing by the flow's
// conntrack entry until it expires or is flushed; over TCP the port is
// closed by reset so it can be reused at once.
func (c *Client) AskFrom(ctx context.Context, network string, port uint16, dst netip.AddrPort) (Reply, error) {
	conn, err := c.DialFrom(ctx, network, port, dst)
	if err != nil {
		return Reply{}, err
	}
	if tc, ok := conn.nc.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	defer conn.Close()
	return conn.First(), nil
}

// DialFrom is Dial from source port port; 0 picks one.
func (c *Client) DialFrom(ctx context.Context, network string, port uint16, dst netip.AddrPort) (*Conn, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var udp bool
	switch network {
	case "tcp", "tcp4", "tcp6":
	case "udp", "udp4", "udp6":
		udp = true
	default:
		return nil, fmt.Errorf("%s: dialing %s %s: unsupported network", c.Name(), network, dst)
	}

	var nc net.Conn
	err := c.Do(func() error {
		// dst is a literal, so the socket is created on this goroutine's
		// (switched) thread; Go dials several addresses in parallel only
		// for names that resolve to both families.
		var d net.Dialer
		if port != 0 {
			if udp {
				d.LocalAddr = &net.UDPAddr{Port: int(port)}
			} else {
				d.LocalAddr = &net.TCPAddr{Port: int(port)}
			}
		}
		var err error
		nc, err = d.DialContext(ctx, network, dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: dialing %s %s: %w", c.Name(), network, dst, err)
	}
	conn := &Conn{client: c, nc: nc, r: bufio.NewReader(nc), udp: udp, network: network, dst: dst}
	var line string
	if udp {
		line, err = conn.udpExchange(ctx)
	} else {
		line, err = conn.readLine(ctx)
	}
	if err == nil {
		conn.first, err = parseReply(line)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("%s: reading greeting on %s %s: %w", c.Name(), network, dst, err)
	}
	if !c.track(conn) {
		nc.Close()
		return nil, fmt.Errorf("%s: dialing %s %s: %w", c.Name(), network, dst, ErrClosed)
	}
	return conn, nil
}

// First returns the backend's greeting received when the connection was
// opened.
func (c *Conn) First() Reply { return c.first }

// LocalAddr returns the connection's local address in the client namespace.
func (c *Conn) LocalAddr() netip.AddrPort { return addrPort(c.nc.LocalAddr()) }

// RoundTrip sends one request on the connection and returns the name of the
// backend that answered. Over TCP, that proves the established connection
// still reaches the same backend. ctx bounds the round trip
// (DefaultTimeout if it has no deadline).
func (c *Conn) RoundTrip(ctx context.Context) (string, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var (
		line string
		err  error
	)
	if c.udp {
		line, err = c.udpExchange(ctx)
		if err == nil {
			var r Reply
			r, err = parseReply(line)
			line = r.Backend
		}
	} else {
		if _, err = c.write(ctx, "ping\n"); err == nil {
			line, err = c.readLine(ctx)
			line = strings.TrimSuffix(line, "\n")
		}
	}
	if err != nil {
		return "", fmt.Errorf("%s: round trip on %s %s: %w", c.client.Name(), c.network, c.dst, err)
	}
	return line, nil
}

// Close closes the connection.
func (c *Conn) Close() error {
	c.client.untrack(c)
	return c.nc.Close()
}

// bind makes ctx's deadline and cancellation apply to the next I/O on c.
func (c *Conn) bind(ctx context.Context) (release func()) {
	deadline, _ := ctx.Deadline()
	c.nc.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	return func() { stop() }
}

func (c *Conn) write(ctx context.Context, s string) (int, error) {
	defer c.bind(ctx)()
	n, err := c.nc.Write([]byte(s))
	return n, ctxErr(ctx, err)
}

func (c *Conn) readLine(ctx context.Context) (string, error) {
	defer c.bind(ctx)()
	line, err := c.r.ReadString('\n')
	return line, ctxErr(ctx, err)
}

// udpExchange sends a datagram and returns the answer, retrying a few times
// if none comes back.
func (c *Conn) udpExchange(ctx context.Context) (string, error) {
	defer c.bind(ctx)()
	buf := make([]byte, 512)
	var err error
	for range udpAttempts {
		if ctx.Err() != nil {
			break
		}
		if _, err = c.nc.Write([]byte("ping\n")); err != nil {
			break
		}
		wait := time.Now().Add(udpWait)
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		c.nc.SetReadDeadline(wait)
		var n int
		n, err = c.nc.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
	}
	return "", ctxErr(ctx, err)
}

// ctxErr adds the context's error to an I/O error caused by it.
func ctxErr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
	}
	return err
}

func (c *Client) track(conn *Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns == nil {
		return false
	}
	c.conns[conn] = struct{}{}
	return true
}

func (c *Client) untrack(conn *Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.conns, conn)
}

func (c *Client) closeConns() {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for conn := range conns {
		conn.nc.Close()
	}
}

// SpreadResult counts which backends answered a Spread.
type SpreadResult struct {
	// Counts maps backend names to the number of connections they answered.
	Counts map[string]int
	// Errors is the number of connections that failed.
	Errors int
	// Err is the first failure, if any.
	Err error
}

// Add adds the counts and errors of o to r.
func (r *SpreadResult) Add(o SpreadResult) {
	if r.Counts == nil {
		r.Counts = map[string]int{}
	}
	for n, c := range o.Counts {
		r.Counts[n] += c
	}
	r.Errors += o.Errors
	if r.Err == nil {
		r.Err = o.Err
	}
}

// Total returns the number of attempted connections.
func (r SpreadResult) Total() int {
	n := r.Errors
	for _, c := range r.Counts {
		n += c
	}
	return n
}

// String lists the counts sorted by backend name, e.g.
// "backend0=50 backend1=50 errors=0".
func (r SpreadResult) String() string {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(r.Counts)) {
		fmt.Fprintf(&b, "%s=%d ", name, r.Counts[name])
	}
	fmt.Fprintf(&b, "errors=%d", r.Errors)
	return b.String()
}

// Spread makes up to n connections to dst with Ask, at most concurrency at a
// time, and counts the answering backends. It stops early when ctx is done;
// each connection is bounded by ctx or DefaultTimeout.
func (c *Client) Spread(ctx context.Context, network string, dst netip.AddrPort, n, concurrency int) SpreadResult {
	res := SpreadResult{Counts: map[string]int{}}
	var (
		mu   sync.Mutex
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range max(1, min(concurrency, n)) {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				r, err := c.Ask(ctx, network, dst)
				mu.Lock()
				if err != nil {
					res.Errors++
					if res.Err == nil {
						res.Err = err
					}
				} else {
					res.Counts[r.Backend]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

// withDefaultTimeout applies DefaultTimeout to a context without deadline.
func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}
