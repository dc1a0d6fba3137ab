package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
)

// The load generator runs as a child process of the suite's own binary,
// started inside the client namespace (forked from a thread switched into
// it), so that every one of its threads is in that namespace and it can use
// Go's ordinary netpoller-driven sockets; the backends' servers stay in the
// parent. The parent sends a loadSpec as JSON on stdin and reads a
// loadResult as JSON from stdout.

// childEnv, when set in the environment, makes the binary (the suite or its
// test binary) act as the load generator child.
const childEnv = "L4NFT_BENCH_LOAD_CHILD"

// loadSpec describes one measurement.
type loadSpec struct {
	// Target is the address:port clients connect to.
	Target string
	// KeepAlive makes each worker hold one connection and do request and
	// response on it; otherwise each operation is a new connection:
	// connect, read the backend's greeting (its name), close.
	KeepAlive bool
	// Workers is the number of concurrent clients.
	Workers int
	// Warmup runs before the measured Duration and is not counted.
	Warmup, Duration time.Duration
	// MaxOps, if positive, stops the run after that many operations
	// (Duration still bounds it).
	MaxOps int64
	// Timeout bounds each operation.
	Timeout time.Duration
}

// loadResult is what a measurement saw.
type loadResult struct {
	// Ops counts the operations that succeeded within the measured interval.
	Ops int64
	// Errors counts the operations that failed, FirstErr describes one.
	Errors   int64
	FirstErr string `json:",omitempty"`
	// Seconds is the measured interval.
	Seconds float64
	// P50 and P99 are latency percentiles of one operation.
	P50, P99 time.Duration
	// Split counts the successful operations by the backend that answered.
	Split map[string]int64
	// AllOps counts every successful operation, warm-up included.
	AllOps int64
	// CPU is filled in by the parent: the CPU time of the whole run.
	CPU cpuUse
}

// CPUPerOp returns the CPU time the suite and the kernel spent per
// successful operation, warm-up included.
func (r loadResult) CPUPerOp() time.Duration {
	if r.AllOps == 0 {
		return 0
	}
	return r.CPU.Ours / time.Duration(r.AllOps)
}

// OtherLoad returns the share of the machine's CPUs others used.
func (r loadResult) OtherLoad() float64 {
	if r.CPU.Wall <= 0 {
		return 0
	}
	return r.CPU.Other.Seconds() / (r.CPU.Wall.Seconds() * float64(runtime.NumCPU()))
}

// Rate returns successful operations per second.
func (r loadResult) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Seconds
}

// runLoad runs spec from client's namespace and returns the result.
func runLoad(ctx context.Context, client *testbed.Client, spec loadSpec) (loadResult, error) {
	in, err := json.Marshal(spec)
	if err != nil {
		return loadResult{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return loadResult{}, fmt.Errorf("finding the suite's own binary: %w", err)
	}
	// The child's work is bounded by its spec; this only catches a hang.
	ctx, cancel := context.WithTimeout(ctx, spec.Warmup+spec.Duration+spec.Timeout+30*time.Second)
	defer cancel()
	var (
		out, stderr bytes.Buffer
		children    time.Duration
	)
	before := sampleCPU()
	err = client.Do(func() error {
		cmd := exec.CommandContext(ctx, self)
		cmd.Env = append(os.Environ(), childEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(in), &out, &stderr
		err := cmd.Run()
		if cmd.ProcessState != nil {
			children = childCPU(cmd.ProcessState.SysUsage())
		}
		return err
	})
	use := cpuBetween(before, sampleCPU(), children)
	if err != nil {
		return loadResult{}, fmt.Errorf("%s: load generator: %w: %s", client.Name(), err, strings.TrimSpace(stderr.String()))
	}
	var res loadResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return loadResult{}, fmt.Errorf("%s: load generator output %q: %w", client.Name(), out.String(), err)
	}
	res.CPU = use
	return res, nil
}

// isLoadChild reports whether this process was started as the load
// generator.
func isLoadChild() bool { return os.Getenv(childEnv) != "" }

// loadChildMain is the load generator child's main: spec on stdin, result
// on stdout. It returns the exit code.
func loadChildMain(stdin io.Reader, stdout, stderr io.Writer) int {
	var spec loadSpec
	if err := json.NewDecoder(stdin).Decode(&spec); err != nil {
		fmt.Fprintf(stderr, "reading load spec: %v\n", err)
		return 2
	}
	res := generate(spec)
	if err := json.NewEncoder(stdout).Encode(res); err != nil {
		fmt.Fprintf(stderr, "writing load result: %v\n", err)
		return 1
	}
	return 0
}

// workerStats is one worker's share of a result.
type workerStats struct {
	all       int64 // successful operations, warm-up included
	latencies []time.Duration
	errors    int64
	firstErr  error
	split     map[string]int64
}

func (w *workerStats) fail(err error) {
	w.errors++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// generate runs the workers of spec in this process.
func generate(spec loadSpec) loadResult {
	start := time.Now()
	from := start.Add(spec.Warmup)
	until := from.Add(spec.Duration)
	var budget atomic.Int64
	budget.Store(spec.MaxOps)
	if spec.MaxOps <= 0 {
		budget.Store(1 << 62)
	}
	stats := make([]*workerStats, spec.Workers)
	var wg sync.WaitGroup
	for i := range stats {
		w := &workerStats{split: map[string]int64{}, latencies: make([]time.Duration, 0, 4096)}
		stats[i] = w
		wg.Go(func() {
			if spec.KeepAlive {
				keepAliveWorker(spec, from, until, &budget, w)
			} else {
				connectWorker(spec, from, until, &budget, w)
			}
		})
	}
	wg.Wait()
	end := time.Now()

	res := loadResult{Split: map[string]int64{}, Seconds: spec.Duration.Seconds()}
	if spec.MaxOps > 0 {
		// A counted run ends when the budget is spent.
		res.Seconds = end.Sub(from).Seconds()
	}
	var all []time.Duration
	for _, w := range stats {
		all = append(all, w.latencies...)
		res.Errors += w.errors
		res.AllOps += w.all
		if w.firstErr != nil && res.FirstErr == "" {
			res.FirstErr = w.firstErr.Error()
		}
		for k, v := range w.split {
			res.Split[k] += v
		}
	}
	res.Ops = int64(len(all))
	if len(all) > 0 {
		slices.Sort(all)
		res.P50 = all[len(all)/2]
		res.P99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return res
}

// record counts one successful operation if it lies in the measured
// interval (a counted run counts all of them).
func (w *workerStats) record(spec loadSpec, from, until, t0, t1 time.Time, name string) {
	w.all++
	if spec.MaxOps <= 0 && (t0.Before(from) || t1.After(until)) {
		return
	}
	w.latencies = append(w.latencies, t1.Sub(t0))
	w.split[name]++
}

// connectWorker opens, reads the greeting of, and resets connections until
// the interval ends or the budget is spent. Connections are closed with
// SO_LINGER 0 (a reset), so the client keeps no TIME_WAIT sockets and its
// ports can be reused at once.
func connectWorker(spec loadSpec, from, until time.Time, budget *atomic.Int64, w *workerStats) {
	d := net.Dialer{Timeout: spec.Timeout}
	buf := make([]byte, 256)
	for time.Now().Before(until) && budget.Add(-1) >= 0 {
		t0 := time.Now()
		name, err := askOnce(&d, spec, buf)
		t1 := time.Now()
		if err != nil {
			if !t0.Before(from) || spec.MaxOps > 0 {
				w.fail(err)
			}
			continue
		}
		w.record(spec, from, until, t0, t1, name)
	}
}

// askOnce makes one connection and returns the name of the backend that
// greeted it.
func askOnce(d *net.Dialer, spec loadSpec, buf []byte) (string, error) {
	c, err := d.Dial("tcp4", spec.Target)
	if err != nil {
		return "", err
	}
	tc := c.(*net.TCPConn)
	defer tc.Close()
	tc.SetLinger(0)
	tc.SetDeadline(time.Now().Add(spec.Timeout))
	n := 0
	for range 8 { // the greeting is one short line: bounded reads
		m, err := tc.Read(buf[n:])
		n += m
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			name, _, _ := strings.Cut(string(buf[:i]), " ")
			return name, nil
		}
		if err != nil {
			return "", fmt.Errorf("reading greeting: %w", err)
		}
		if n == len(buf) {
			break
		}
	}
	return "", errors.New("reading greeting: no complete line")
}

// keepAliveWorker does request and response ("ping" answered by the
// backend's name) on one connection until the interval ends, opening a new
// connection only after an error.
func keepAliveWorker(spec loadSpec, from, until time.Time, budget *atomic.Int64, w *workerStats) {
	d := net.Dialer{Timeout: spec.Timeout}
	var (
		conn *net.TCPConn
		r    *bufio.Reader
	)
	defer func() {
		if conn != nil {
			conn.SetLinger(0)
			conn.Close()
		}
	}()
	req := []byte("ping\n")
	for time.Now().Before(until) && budget.Add(-1) >= 0 {
		if conn == nil {
			c, err := d.Dial("tcp4", spec.Target)
			if err != nil {
				w.fail(err)
				continue
			}
			conn, r = c.(*net.TCPConn), bufio.NewReader(c)
			conn.SetDeadline(time.Now().Add(spec.Timeout))
			if _, err := r.ReadString('\n'); err != nil { // the greeting
				w.fail(fmt.Errorf("reading greeting: %w", err))
				conn.SetLinger(0)
				conn.Close()
				conn = nil
				continue
			}
		}
		t0 := time.Now()
		conn.SetDeadline(t0.Add(spec.Timeout))
		_, err := conn.Write(req)
		var line string
		if err == nil {
			line, err = r.ReadString('\n')
		}
		t1 := time.Now()
		if err != nil {
			w.fail(err)
			conn.SetLinger(0)
			conn.Close()
			conn = nil
			continue
		}
		w.record(spec, from, until, t0, t1, strings.TrimSuffix(line, "\n"))
	}
}
