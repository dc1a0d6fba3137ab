package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/l4nft/l4nft/agent/netlab"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// The demo's farm: the seed article's, in documentation addresses.
var (
	demoVIP  = netip.MustParseAddr("198.51.100.250")
	demoPort = uint16(80)
)

func demoCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	conns := fs.Int("connections", 300, "TCP connections to send in each mode")
	concurrency := fs.Int("concurrency", 16, "connections in flight at a time")
	quiet := fs.Bool("no-ruleset", false, "do not print the installed rulesets")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected arguments %q", args)
		}
		if *conns < 1 || *concurrency < 1 {
			return usagef("--connections and --concurrency must be at least 1")
		}
		if os.Geteuid() != 0 {
			return rerunAsRoot(ctx, e)
		}
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		sigs := make(chan os.Signal, 1)
		e.notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		defer e.stop(sigs)
		go func() {
			select {
			case <-sigs:
				fmt.Fprintln(e.stderr, "interrupted: removing the sandbox")
				cancel()
			case <-ctx.Done():
			}
		}()
		return runDemo(ctx, e.stdout, demoOptions{conns: *conns, concurrency: *concurrency, ruleset: !*quiet})
	}
}

// rerunAsRoot runs this same binary and command again through sudo: the
// demo creates network namespaces, which needs root, and `go run
// ./agent/cmd/l4nft demo` should work for a user with sudo as it does for
// root (`sudo go run` fails where Go is not on sudo's PATH).
func rerunAsRoot(ctx context.Context, e *env) error {
	const need = "the demo creates network namespaces and needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
	sudo, err := exec.LookPath("sudo")
	if err != nil {
		return errors.New(need + ", and sudo is not installed: run it as root")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("%s: finding this program to run it through sudo: %w", need, err)
	}
	fmt.Fprintf(e.stderr, "%s: running it through sudo\n", need)
	cmd := exec.CommandContext(ctx, sudo, append([]string{"--", self}, os.Args[1:]...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, e.stdout, e.stderr
	return cmd.Run()
}

type demoOptions struct {
	conns, concurrency int
	ruleset            bool
}

func runDemo(ctx context.Context, w io.Writer, o demoOptions) (err error) {
	start := time.Now()
	fmt.Fprintln(w, "l4nft demo: the seed article's farm, balancing real traffic in a sandbox.")
	fmt.Fprintln(w)
	buildCtx, cancelBuild := context.WithTimeout(ctx, 30*time.Second)
	defer cancelBuild()
	lab, err := netlab.New(buildCtx, netlab.Options{Clients: 1, Backends: 2, Ports: []uint16{demoPort}})
	if err != nil {
		return fmt.Errorf("building the sandbox: %w", err)
	}
	defer func() {
		if cerr := lab.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("removing the sandbox: %w", cerr))
			return
		}
		fmt.Fprintf(w, "Sandbox removed; nothing was changed outside it. (%s in all)\n", time.Since(start).Round(time.Millisecond))
	}()
	if err := lab.Balancer.AddVIP(demoVIP); err != nil {
		return err
	}
	client := lab.Clients[0]
	be0, be1 := lab.Backends[0], lab.Backends[1]
	fmt.Fprintf(w, "Sandbox %s: four network namespaces, removed at the end (also on Ctrl-C).\n\n", lab.ID)
	line1 := fmt.Sprintf("  %s %s --> [balancer] %s:%d --+--> %s %s:%d  weight 1", client.Name(), client.Addr4, demoVIP, demoPort, be0.Name(), be0.Addr4, demoPort)
	fork := strings.Index(line1, "+-->")
	fmt.Fprintf(w, "%s\n%s+--> %s %s:%d  weight 2\n\n", line1, strings.Repeat(" ", fork), be1.Name(), be1.Addr4, demoPort)

	bal, err := lb.Open(ctx, lb.Options{NetNS: nft.NetNSFd(lab.Balancer.Fd())})
	if err != nil {
		return err
	}
	defer bal.Close()

	farm := lb.Farm{Name: "web", Address: demoVIP, Ports: []lb.PortRange{lb.Port(demoPort)}, Protocol: lb.TCP,
		Backends: []lb.Backend{
			{Name: be0.Name(), Address: be0.Addr4, Port: demoPort, Weight: 1},
			{Name: be1.Name(), Address: be1.Addr4, Port: demoPort, Weight: 2},
		}}
	steps := []struct {
		title   string
		mode    lb.Mode
		source  netip.Addr
		wantSrc netip.Addr
	}{
		{"NAT mode: the balancer rewrites the client's address to the VIP (the seed's SNAT), so backends reply to it", lb.NAT, demoVIP, demoVIP},
		{"DNAT mode: backends see the client's own address and reply through the balancer, their gateway", lb.DNAT, netip.Addr{}, client.Addr4},
	}
	var prevRuleset string
	for i, step := range steps {
		f := farm
		f.Mode, f.Source = step.mode, step.source
		fmt.Fprintf(w, "== %d. %s ==\n\n", i+1, step.title)
		before, err := bal.Status(ctx)
		if err != nil {
			return err
		}
		res, err := bal.Apply(ctx, lb.State{Farms: []lb.Farm{f}})
		if err != nil {
			return err
		}
		how := "changed in place"
		if res.Rebuilt {
			how = "table built"
		}
		fmt.Fprintf(w, "Applied in one atomic transaction: %d netlink messages, %s (%s).\n", res.Messages, res.Duration.Round(time.Microsecond), how)

		r := sendDemoTraffic(ctx, client, netip.AddrPortFrom(demoVIP, demoPort), o.conns, o.concurrency)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		after, err := bal.Status(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "Sent %d TCP connections from %s to %s:%d; %d failed.\n\n", o.conns, client.Addr4, demoVIP, demoPort, r.errors)
		if err := printSplit(w, f, r, counterDelta(before, after)); err != nil {
			return err
		}
		for _, b := range f.Backends {
			for _, src := range r.sources[b.Name] {
				if src != step.wantSrc {
					return fmt.Errorf("%s saw connections from %s, want %s", b.Name, src, step.wantSrc)
				}
			}
		}
		if r.errors > 0 {
			return fmt.Errorf("%d of %d connections failed; first error: %w", r.errors, o.conns, r.firstErr)
		}
		text := bal.Render()
		switch {
		case !o.ruleset:
		case prevRuleset == "":
			fmt.Fprintln(w, "\nThe ruleset installed in the balancer's namespace (`l4nft render FILE` prints it for a file):")
			fmt.Fprintln(w)
			for line := range strings.Lines(text) {
				fmt.Fprint(w, "    ", line)
			}
		default:
			fmt.Fprintln(w, "\nWhat changed in the ruleset (- removed, + added); the rest is as above:")
			fmt.Fprintln(w)
			printLineDiff(w, prevRuleset, text)
		}
		prevRuleset = text
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Next: write a configuration file (see README) and run `l4nft validate FILE`, `l4nft render FILE`, `l4nft run --config FILE`.")
	return nil
}

type demoResult struct {
	counts   map[string]int
	sources  map[string][]netip.Addr // distinct sources each backend saw
	errors   int
	firstErr error
}

// sendDemoTraffic makes n connections and records who answered and which
// source address the backend saw.
func sendDemoTraffic(ctx context.Context, c *netlab.Client, dst netip.AddrPort, n, concurrency int) demoResult {
	r := demoResult{counts: map[string]int{}, sources: map[string][]netip.Addr{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{})
	go func() {
		defer close(next)
		for range n {
			select {
			case next <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}()
	for range min(concurrency, n) {
		wg.Go(func() {
			for range next {
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				reply, err := c.Ask(cctx, "tcp4", dst)
				cancel()
				mu.Lock()
				if err != nil {
					r.errors++
					if r.firstErr == nil {
						r.firstErr = err
					}
				} else {
					r.counts[reply.Backend]++
					if src := reply.Source.Addr(); !slices.Contains(r.sources[reply.Backend], src) {
						r.sources[reply.Backend] = append(r.sources[reply.Backend], src)
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return r
}

// counterDelta returns the new connections each backend's counter saw
// between two statuses.
func counterDelta(before, after lb.Status) map[string]uint64 {
	was := map[string]uint64{}
	for _, f := range before.Farms {
		for _, b := range f.Backends {
			was[b.Name] = b.Connections
		}
	}
	out := map[string]uint64{}
	for _, f := range after.Farms {
		for _, b := range f.Backends {
			if b.Connections >= was[b.Name] {
				out[b.Name] = b.Connections - was[b.Name]
			} else { // recreated: counts from zero
				out[b.Name] = b.Connections
			}
		}
	}
	return out
}

func printSplit(w io.Writer, f lb.Farm, r demoResult, counters map[string]uint64) error {
	total, weights := 0, 0
	for _, b := range f.Backends {
		total += r.counts[b.Name]
		weights += b.Weight
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  BACKEND\tADDRESS\tWEIGHT\tCONNECTIONS\tSHARE\tEXPECTED\tNFT COUNTER\tSOURCE ADDRESS SEEN")
	for _, b := range f.Backends {
		share := 0.0
		if total > 0 {
			share = 100 * float64(r.counts[b.Name]) / float64(total)
		}
		var srcs []string
		for _, s := range r.sources[b.Name] {
			srcs = append(srcs, s.String())
		}
		if len(srcs) == 0 {
			srcs = []string{"-"}
		}
		fmt.Fprintf(tw, "  %s\t%s:%d\t%d\t%d\t%.1f%%\t%.1f%%\t%d\t%s\n", b.Name, b.Address, b.Port, b.Weight,
			r.counts[b.Name], share, 100*float64(b.Weight)/float64(weights), counters[b.Name], strings.Join(srcs, ", "))
	}
	return tw.Flush()
}

// printLineDiff prints the lines only in a with "-" and only in b with "+",
// in order. Rulesets are short and their lines mostly unique, so a set
// difference reads well enough.
func printLineDiff(w io.Writer, a, b string) {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for l := range strings.Lines(s) {
			m[l]++
		}
		return m
	}
	inA, inB := count(a), count(b)
	for l := range strings.Lines(a) {
		if inB[l] == 0 {
			fmt.Fprint(w, "  - ", l)
		}
	}
	for l := range strings.Lines(b) {
		if inA[l] == 0 {
			fmt.Fprint(w, "  + ", l)
		}
	}
}
