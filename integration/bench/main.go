// Command bench measures l4nft against the seed's iptables design and
// against the physical floor, in throwaway network namespaces, and writes a
// markdown report and an SVG plot. See README.md.
//
//	sudo go run ./integration/bench -out integration/bench/RESULTS.md
//
// It needs root and iptables-legacy-restore, iptables-nft-restore and nft.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// config is everything a run depends on.
type config struct {
	// Out is the markdown report; the plot goes next to it as ratio.svg.
	Out string
	// Sections to run: "dataplane", "controlplane", "distribution".
	Sections []string
	// Reps is the number of repetitions of every data-plane and
	// control-plane point; medians are reported.
	Reps int
	// Warmup and Duration are per data-plane point.
	Warmup, Duration time.Duration
	// Sizes are the farm counts (2 backends each).
	Sizes []int
	// Variants are the data-plane variants, in run order.
	Variants []string
	// CPOptions are l4nft variants (see farmOption) whose control plane
	// is measured too, every farm with the variant's option.
	CPOptions []string
	// Workers is the number of concurrent clients.
	Workers int
	// Changes is how many of each single change a control-plane repetition
	// makes.
	Changes int
	// WideFarms x WidePerFarm is the large-backend-count control-plane
	// case; WideFarms 0 skips it.
	WideFarms, WidePerFarm int
	// DistConns is the number of connections per distribution run, and
	// DistLimit bounds its time.
	DistConns int
	DistLimit time.Duration
	// IptablesTimeout bounds one iptables-restore install.
	IptablesTimeout time.Duration
	// Smoke marks a run that checks the suite works, not how fast.
	Smoke bool
	// Suite is "lib" (the library, iptables and the floor: the sections)
	// or "agent" (the l4nft binary's control plane, agent.go).
	Suite string
	// AgentWatch is the agent's --watch-interval in the agent suite.
	AgentWatch time.Duration
	// AgentChanges is how many API changes the agent makes before its
	// memory is read the second time.
	AgentChanges int
	// AgentLayouts are the configuration layouts the agent suite measures,
	// each at every size: layoutFile, layoutDir.
	AgentLayouts []string
	// L4nftBinary is a prebuilt l4nft; empty builds agent/cmd/l4nft.
	L4nftBinary string
	// AgentDir is where the agent's file and socket go (a temporary
	// directory under it); empty is os.TempDir.
	AgentDir string
	// WriteResults makes the agent suite write its section into Out.
	WriteResults bool
	// Command is the command line, for the report.
	Command string
}

// Suites (-suite).
const (
	suiteLib   = "lib"
	suiteAgent = "agent"
)

// Tools the suite runs inside the namespaces (Debian packages iptables and
// nftables).
var requiredTools = []string{"iptables-legacy-restore", "iptables-nft-restore", "nft"}

func main() {
	if isLoadChild() {
		os.Exit(loadChildMain(os.Stdin, os.Stdout, os.Stderr))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run parses args, runs the suite and writes the report. It returns the
// exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	cfg.Command = "go run ./integration/bench " + strings.Join(args, " ")
	logf := func(format string, a ...any) {
		fmt.Fprintf(stdout, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	if cfg.Suite == suiteAgent {
		res := newAgentResults(cfg)
		var err error
		if res.Rows, err = runAgentSuite(ctx, cfg, logf); err != nil {
			fmt.Fprintln(stderr, "bench:", err)
			return 1
		}
		res.Finished = time.Now()
		section := renderAgent(cfg, res)
		fmt.Fprint(stdout, "\n"+section)
		if cfg.WriteResults {
			if err := writeAgentSection(cfg.Out, section); err != nil {
				fmt.Fprintln(stderr, "bench:", err)
				return 1
			}
			logf("wrote the agent section into %s", cfg.Out)
		}
		return 0
	}
	res, err := runSuite(ctx, cfg, logf)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if err := writeReport(cfg, res); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	if res.DataPlane != nil {
		logf("wrote %s and %s", cfg.Out, plotPath(cfg.Out))
	} else {
		logf("wrote %s", cfg.Out)
	}
	return 0
}

// parseFlags turns the command line into a config.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	smoke := fs.Bool("smoke", false, "tiny sizes and durations: check that the suite works, not how fast")
	out := fs.String("out", "integration/bench/RESULTS.md", "markdown report to write; the plot goes next to it as ratio.svg")
	reps := fs.Int("reps", 3, "repetitions of every point (medians are reported)")
	duration := fs.Duration("duration", 3*time.Second, "measured time per data-plane point")
	warmup := fs.Duration("warmup", 300*time.Millisecond, "unmeasured warm-up before each data-plane point")
	sizes := fs.String("sizes", "1,100,1000,10000", "farm counts, 2 backends each")
	cpOptions := fs.String("cp-options", "", "control plane: also measure l4nft with every farm of these variants ("+strings.Join(allVariants[len(defaultVariants):], ", ")+")")
	variants := fs.String("variants", strings.Join(defaultVariants, ","), "data-plane variants, in run order (also: "+strings.Join(allVariants[len(defaultVariants):], ", ")+")")
	sections := fs.String("sections", "dataplane,controlplane,distribution", "sections to run")
	workers := fs.Int("workers", 32, "concurrent clients")
	changes := fs.Int("changes", 5, "single changes of each kind per control-plane repetition")
	wide := fs.String("wide", "1000x100", "FARMSxBACKENDS of the large control-plane case (\"\" skips it)")
	distConns := fs.Int("dist-conns", 100000, "connections per distribution run")
	suite := fs.String("suite", suiteLib, "lib: the library against iptables and the floor (-sections); agent: the l4nft binary's control plane (defaults: -sizes 100,1000,10000 -wide 1x1000 -reps 5)")
	agentWatch := fs.Duration("agent-watch", time.Second, "agent suite: the agent's --watch-interval, its polling backstop (edits are seen at once through inotify)")
	agentChanges := fs.Int("agent-changes", 1000, "agent suite: API changes before the daemon's memory is read again")
	agentLayout := fs.String("agent-layout", "both", "agent suite: configuration layout, file (one file), dir (l4nft.yaml + farms.d/NAME.yaml) or both")
	l4nftBin := fs.String("l4nft", "", "agent suite: a prebuilt l4nft binary (default: build agent/cmd/l4nft)")
	agentDir := fs.String("agent-dir", "", "agent suite: directory for the agent's file and socket (default $TMPDIR or /tmp); its file system's fsync is part of every API change")
	writeResults := fs.Bool("write-results", false, "agent suite: write its section into -out, keeping the rest of the file")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *suite == suiteAgent {
		if !set["sizes"] {
			*sizes = "100,1000,10000"
		}
		if !set["wide"] {
			*wide = "1x1000"
		}
		if !set["reps"] {
			*reps = 5
		}
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg := config{
		Out: *out, Reps: *reps, Duration: *duration, Warmup: *warmup, Workers: *workers,
		Changes: *changes, DistConns: *distConns, Smoke: *smoke,
		Sections: splitList(*sections), Variants: splitList(*variants), CPOptions: splitList(*cpOptions),
		IptablesTimeout: 2 * time.Minute, DistLimit: 2 * time.Minute,
		Suite: *suite, AgentWatch: *agentWatch, AgentChanges: *agentChanges, L4nftBinary: *l4nftBin, AgentDir: *agentDir, WriteResults: *writeResults,
	}
	switch *agentLayout {
	case layoutFile, layoutDir:
		cfg.AgentLayouts = []string{*agentLayout}
	case "both":
		cfg.AgentLayouts = []string{layoutFile, layoutDir}
	default:
		return config{}, fmt.Errorf("-agent-layout %q: want file, dir or both", *agentLayout)
	}
	var err error
	if cfg.Sizes, err = parseSizes(*sizes); err != nil {
		return config{}, err
	}
	if *wide != "" {
		f, b, ok := strings.Cut(*wide, "x")
		cfg.WideFarms, err = strconv.Atoi(f)
		if err == nil {
			cfg.WidePerFarm, err = strconv.Atoi(b)
		}
		if !ok || err != nil || cfg.WideFarms < 1 || cfg.WidePerFarm < 1 {
			return config{}, fmt.Errorf("-wide %q: want FARMSxBACKENDS such as 1000x100", *wide)
		}
	}
	if *smoke {
		cfg = smokeConfig(cfg)
	}
	return cfg, cfg.check()
}

// smokeConfig shrinks cfg to a run that only shows the suite works.
func smokeConfig(cfg config) config {
	cfg.Smoke = true
	cfg.Sizes = []int{1, 10}
	cfg.Reps = 1
	cfg.Duration = 300 * time.Millisecond
	cfg.Warmup = 50 * time.Millisecond
	cfg.Changes = 2
	cfg.WideFarms, cfg.WidePerFarm = 10, 10
	cfg.DistConns = 2000
	if cfg.Suite == suiteAgent {
		cfg.Sizes = []int{10}
		cfg.AgentChanges = min(cfg.AgentChanges, 20)
	}
	return cfg
}

func (c config) check() error {
	switch {
	case c.Reps < 1:
		return fmt.Errorf("-reps %d: want at least 1", c.Reps)
	case c.Duration <= 0 || c.Warmup < 0:
		return errors.New("-duration must be positive and -warmup not negative")
	case c.Workers < 1:
		return fmt.Errorf("-workers %d: want at least 1", c.Workers)
	case c.Changes < 1:
		return fmt.Errorf("-changes %d: want at least 1", c.Changes)
	case c.DistConns < 100:
		return fmt.Errorf("-dist-conns %d: want at least 100", c.DistConns)
	case c.Suite != suiteLib && c.Suite != suiteAgent:
		return fmt.Errorf("-suite %q: want %s or %s", c.Suite, suiteLib, suiteAgent)
	case c.AgentWatch <= 0:
		return fmt.Errorf("-agent-watch %v: want a positive interval (reloads are measured through the file watcher)", c.AgentWatch)
	case c.AgentChanges < 0:
		return fmt.Errorf("-agent-changes %d: want at least 0", c.AgentChanges)
	}
	for _, v := range c.CPOptions {
		if _, ok := farmOption[v]; !ok || v == varL4nft {
			return fmt.Errorf("unknown -cp-options variant %q (want some of %s)", v, strings.Join(allVariants[len(defaultVariants):], ","))
		}
	}
	for _, v := range c.Variants {
		if !contains(allVariants, v) {
			return fmt.Errorf("unknown variant %q (want some of %s)", v, strings.Join(allVariants, ","))
		}
	}
	if c.runs("dataplane") && !contains(c.Variants, varFloor) {
		return errors.New("the data plane needs the floor variant: ratios are to it")
	}
	for _, s := range c.Sections {
		if !contains([]string{"dataplane", "controlplane", "distribution"}, s) {
			return fmt.Errorf("unknown section %q", s)
		}
	}
	return nil
}

func (c config) runs(section string) bool { return contains(c.Sections, section) }

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 || n > maxFarms {
			return nil, fmt.Errorf("-sizes: %q is not a farm count from 1 to %d", f, maxFarms)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, errors.New("-sizes: no sizes")
	}
	return out, nil
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// results is everything a run measured.
type results struct {
	Started, Finished time.Time
	Machine           machine
	DataPlane         *dataPlane
	ControlPlane      []*cpRow
	KernelRef         *kernelRef
	Distribution      []distRow
}

// runSuite checks the environment and runs the configured sections.
func runSuite(ctx context.Context, cfg config, logf func(string, ...any)) (*results, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build network namespaces")
	}
	for _, tool := range requiredTools {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (install the Debian packages iptables and nftables): %w", tool, err)
		}
	}
	res := &results{Started: time.Now(), Machine: describeMachine()}
	var err error
	if cfg.runs("dataplane") {
		if res.DataPlane, err = runDataPlane(ctx, cfg, logf); err != nil {
			return nil, fmt.Errorf("data plane: %w", err)
		}
	}
	if cfg.runs("controlplane") {
		if res.KernelRef, err = runKernelRef(ctx, 5*cfg.Changes); err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
		if res.ControlPlane, err = runControlPlane(ctx, cfg, logf); err != nil {
			return nil, fmt.Errorf("control plane: %w", err)
		}
	}
	if cfg.runs("distribution") {
		if res.Distribution, err = runDistribution(ctx, cfg, logf); err != nil {
			return nil, fmt.Errorf("distribution: %w", err)
		}
	}
	res.Finished = time.Now()
	return res, nil
}

// plotPath is where the plot goes for a report at out.
func plotPath(out string) string { return filepath.Join(filepath.Dir(out), "ratio.svg") }
