package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// The agent suite (-suite agent) measures the control-plane paths of the
// l4nft binary through its documented interfaces only: the configuration
// file, the HTTP API on its unix socket, `l4nft apply` and `l4nft status`.
// The kernel is read, outside the timed parts, through the lb library
// (lb.Open reads the installed table back) and through the nf_tables
// generation counter, which the kernel increments with every committed
// transaction.

// Agent measurements, in report order.
const (
	agPatchWeight    = "API PATCH weight"
	agPatchState     = "API PATCH state (drain/up)"
	agAddFarm        = "API add farm (POST)"
	agDeleteFarm     = "API delete farm (DELETE)"
	agReload         = "file reload, one-line edit"
	agApplyInstall   = "`l4nft apply`, install from empty"
	agApplyUnchanged = "`l4nft apply`, unchanged"
	agApplyChange    = "`l4nft apply`, one change"
	agMetrics        = "GET /metrics"
	agStatus         = "`l4nft status`"
)

var agentOps = []string{agPatchWeight, agPatchState, agAddFarm, agDeleteFarm, agReload,
	agApplyInstall, agApplyUnchanged, agApplyChange, agMetrics, agStatus}

// agentMarkMask is written into the agent's file and given to the lb
// reader, so that both agree on the table's layout whatever the library's
// default.
const agentMarkMask = wideMarkMask

// agentRSSLimit is the target for the daemon's peak resident set after
// start; after the changes it may grow by agentRSSGrowth.
const (
	agentRSSLimit  = 150 << 20
	agentRSSGrowth = 0.10
)

// Configuration layouts (-agent-layout): one file holding everything, or
// a directory holding l4nft.yaml (table and options) and farms.d/NAME.yaml,
// one farm per file.
const (
	layoutFile = "file"
	layoutDir  = "dir"
)

// agentCase is one size: farms x perFarm backends.
type agentCase struct{ farms, perFarm int }

// agentRow is what one size measured.
type agentRow struct {
	Farms, PerFarm int
	// Layout is the configuration's layout, layoutFile or layoutDir.
	Layout string
	// Times holds every timing of each measurement.
	Times map[string][]time.Duration
	// Verified counts the timings whose effect was read back from the
	// kernel (for the unchanged apply: that nothing was committed).
	Verified map[string]int
	// The daemon's resident set (VmRSS) and peak (VmHWM), in bytes, once
	// it served its API after start, after the timed steps (before the
	// changes), and after Changes API changes.
	StartRSS, StartHWM, BeforeRSS, BeforeHWM, AfterRSS, AfterHWM uint64
	Changes                                                      int
	// ChangesTime is the wall time of the Changes, one after the other.
	ChangesTime time.Duration
	// MetricsBytes is the size of one /metrics answer.
	MetricsBytes int
	// Notes are anything unexpected that is not an error.
	Notes []string
}

func (r *agentRow) add(op string, d time.Duration, verified bool) {
	r.Times[op] = append(r.Times[op], d)
	if verified {
		r.Verified[op]++
	}
}

// agentTarget is the target of a measurement at a size (judged on the
// median).
func agentTarget(op string, c agentCase) time.Duration {
	switch op {
	case agPatchWeight, agPatchState:
		if c.farms == 1000 && c.perFarm == 2 {
			return 3 * time.Millisecond
		}
		return 5 * time.Millisecond
	case agAddFarm, agDeleteFarm:
		return 5 * time.Millisecond
	case agReload:
		return 100 * time.Millisecond
	case agApplyInstall:
		return 500 * time.Millisecond
	case agApplyUnchanged:
		return 200 * time.Millisecond
	case agApplyChange:
		return 300 * time.Millisecond
	case agMetrics, agStatus:
		return 200 * time.Millisecond
	}
	return 0
}

// agentCases returns S farms of 2 backends for every S, and the wide case.
func agentCases(cfg config) []agentCase {
	var cs []agentCase
	for _, s := range cfg.Sizes {
		cs = append(cs, agentCase{s, 2})
	}
	if cfg.WideFarms > 0 {
		cs = append(cs, agentCase{cfg.WideFarms, cfg.WidePerFarm})
	}
	return cs
}

// runAgentSuite builds the binary (unless given one) and measures every
// size, each in a namespace of its own with a daemon of its own.
func runAgentSuite(ctx context.Context, cfg config, logf func(string, ...any)) ([]*agentRow, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to build network namespaces")
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		return nil, fmt.Errorf("nsenter not found (Debian package util-linux): %w", err)
	}
	bin := cfg.L4nftBinary
	if bin == "" {
		dir, err := os.MkdirTemp("", "l4nft-bench-bin-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "l4nft")
		start := time.Now()
		if err := buildL4nft(ctx, bin); err != nil {
			return nil, err
		}
		logf("agent: built %s in %v", bin, time.Since(start).Round(time.Millisecond))
	}
	var rows []*agentRow
	for _, c := range agentCases(cfg) {
		for _, layout := range cfg.AgentLayouts {
			row, err := runAgentCase(ctx, cfg, bin, c, layout, logf)
			if err != nil {
				return nil, fmt.Errorf("agent at %d farms x %d, %s layout: %w", c.farms, c.perFarm, layout, err)
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// buildL4nft builds agent/cmd/l4nft into out with the go command.
func buildL4nft(ctx context.Context, out string) error {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		if root := os.Getenv("GOROOT"); root != "" {
			gocmd, err = filepath.Join(root, "bin", "go"), nil
		}
		if err != nil {
			return fmt.Errorf("the go command is needed to build l4nft (or pass -l4nft): %w", err)
		}
	}
	mod, err := exec.CommandContext(ctx, gocmd, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(mod)) == "" || strings.TrimSpace(string(mod)) == os.DevNull {
		return fmt.Errorf("finding the module (run from inside the repository): %v", err)
	}
	build := exec.CommandContext(ctx, gocmd, "build", "-o", out, "./agent/cmd/l4nft")
	build.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	if msg, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building l4nft: %w\n%s", err, msg)
	}
	return nil
}

// runAgentCase measures one size in a fresh namespace: `l4nft apply`
// first, then a daemon started on an empty kernel, its file reloads, its
// API, its metrics and status, and its memory before and after many
// changes.
func runAgentCase(ctx context.Context, cfg config, bin string, c agentCase, layout string, logf func(string, ...any)) (_ *agentRow, err error) {
	dir, err := os.MkdirTemp(cfg.AgentDir, "l4nft-bench-agent-")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	ns, err := testbed.NewNamespace("agent", "")
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, ns.Close()) }()
	k, err := newKernelView(ns)
	if err != nil {
		return nil, err
	}
	defer k.close()

	row := &agentRow{Farms: c.farms, PerFarm: c.perFarm, Layout: layout, Times: map[string][]time.Duration{}, Verified: map[string]int{}}
	w := &agentWorld{ctx: ctx, cfg: cfg, bin: bin, ns: ns, k: k, row: row, layout: layout,
		farms: wideFarms(c.farms, c.perFarm), path: filepath.Join(dir, "l4nft.yaml")}
	if layout == layoutDir {
		w.path = filepath.Join(dir, "config")
	}

	if err := w.measureApply(); err != nil {
		return nil, err
	}
	logf("agent: %d farms x %d, %s: apply install %v, unchanged %v, one change %v", c.farms, c.perFarm, layout,
		median(row.Times[agApplyInstall]), median(row.Times[agApplyUnchanged]), median(row.Times[agApplyChange]))

	// The daemon starts on an empty kernel, so that its peak includes the
	// install.
	if err := k.removeTable(ctx); err != nil {
		return nil, err
	}
	if err := w.writeConfig(); err != nil {
		return nil, err
	}
	a, err := startAgent(ctx, ns, bin, w.path, filepath.Join(dir, "api.sock"), filepath.Join(dir, "agent.log"), cfg.AgentWatch)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, a.stop()) }()
	w.agent = a
	row.StartRSS, row.StartHWM = a.proc("VmRSS"), a.proc("VmHWM")
	if err := k.expectFarms(ctx, w.farms); err != nil {
		return nil, fmt.Errorf("after the daemon started: %w", a.withLog(err))
	}

	for _, step := range []func() error{w.measureReload, w.measureAPI, w.measureReads, w.manyChanges} {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := step(); err != nil {
			return nil, a.withLog(err)
		}
	}
	logf("agent: %d farms x %d, %s: PATCH weight %v, state %v, add %v, delete %v, reload %v, metrics %v, status %v; peak RSS %s after start, %s after %d changes",
		c.farms, c.perFarm, layout, median(row.Times[agPatchWeight]), median(row.Times[agPatchState]), median(row.Times[agAddFarm]),
		median(row.Times[agDeleteFarm]), median(row.Times[agReload]), median(row.Times[agMetrics]), median(row.Times[agStatus]),
		fmtBytes(row.StartHWM), fmtBytes(row.AfterHWM), row.Changes)
	return row, nil
}

// agentWorld is one size's namespace, files, daemon and model of the
// configuration.
type agentWorld struct {
	ctx   context.Context
	cfg   config
	bin   string
	ns    *testbed.Namespace
	k     *kernelView
	row   *agentRow
	agent *agentProc
	// farms is what the configuration holds; only the last farm's first
	// backend is ever changed.
	farms []farm
	// layout is layoutFile (path is the file) or layoutDir (path is the
	// directory).
	layout string
	path   string
}

// writeConfig writes the whole configuration at w.path: the file, or the
// directory's main file and one file per farm (removing farm files of
// farms no longer there).
func (w *agentWorld) writeConfig() error {
	if w.layout == layoutFile {
		return os.WriteFile(w.path, []byte(agentConfigText(w.farms)), 0o600)
	}
	farmsDir := filepath.Join(w.path, "farms.d")
	if err := os.MkdirAll(farmsDir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(w.path, "l4nft.yaml"), []byte(agentMainText()), 0o600); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, f := range w.farms {
		want[f.Name+".yaml"] = true
		if err := os.WriteFile(filepath.Join(farmsDir, f.Name+".yaml"), []byte(agentFarmText(f)), 0o600); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(farmsDir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !want[e.Name()] {
			if err := os.Remove(filepath.Join(farmsDir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

// stageTarget writes the configuration as it is now with the target's
// farm changed into a temporary file beside the one it replaces (hidden in
// farms.d, so the agent ignores it), and returns that file and the path
// to rename it over. Only the file layout writes every farm.
func (w *agentWorld) stageTarget() (tmp, dst string, err error) {
	text, dst := agentConfigText(w.farms), w.path
	if w.layout == layoutDir {
		f, _ := w.target()
		text = agentFarmText(*f)
		dst = filepath.Join(w.path, "farms.d", f.Name+".yaml")
	}
	tmp = filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".new")
	return tmp, dst, os.WriteFile(tmp, []byte(text), 0o600)
}

// target returns the farm and backend the changes are made to.
func (w *agentWorld) target() (*farm, *backend) {
	f := &w.farms[len(w.farms)-1]
	return f, &f.Backends[0]
}

// toggleWeight changes the target's weight between 1 and 2 and returns
// the new one.
func (w *agentWorld) toggleWeight() int {
	_, b := w.target()
	b.Weight = b.Weight%2 + 1
	return b.Weight
}

// measureApply times `l4nft apply FILE` inside the namespace (the whole
// process run): from an empty kernel, again unchanged, and after a
// one-line edit.
func (w *agentWorld) measureApply() error {
	ctx, row := w.ctx, w.row
	f, b := w.target()
	if err := w.writeConfig(); err != nil {
		return err
	}
	for range w.cfg.Reps {
		if err := w.k.removeTable(ctx); err != nil {
			return err
		}
		d, err := runIn(ctx, w.ns, "", w.bin, "apply", w.path)
		if err != nil {
			return err
		}
		if err := w.k.expectFarms(ctx, w.farms); err != nil {
			return fmt.Errorf("after apply from empty: %w", err)
		}
		row.add(agApplyInstall, d, true)
	}
	for range w.cfg.Reps {
		g0, err := w.k.generation()
		if err != nil {
			return err
		}
		d, err := runIn(ctx, w.ns, "", w.bin, "apply", w.path)
		if err != nil {
			return err
		}
		g1, err := w.k.generation()
		if err != nil {
			return err
		}
		if g0 != g1 {
			row.note(fmt.Sprintf("an unchanged `l4nft apply` committed a transaction (generation %d -> %d)", g0, g1))
		}
		row.add(agApplyUnchanged, d, g0 == g1)
	}
	for range w.cfg.Reps {
		weight := w.toggleWeight()
		tmp, dst, err := w.stageTarget()
		if err != nil {
			return err
		}
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		d, err := runIn(ctx, w.ns, "", w.bin, "apply", w.path)
		if err != nil {
			return err
		}
		if err := w.k.expectBackend(ctx, f.Name, b.Name, weight, lb.Up); err != nil {
			return fmt.Errorf("after apply of one change: %w", err)
		}
		row.add(agApplyChange, d, true)
	}
	return nil
}

// measureReload times a one-line edit of the file (in the directory
// layout, of the target farm's file), written beside it and renamed over
// it as editors do, until the kernel holds it: the generation counter is
// polled, and each new generation is read back until it holds the new
// weight.
func (w *agentWorld) measureReload() error {
	f, b := w.target()
	for range w.cfg.Reps {
		weight := w.toggleWeight()
		tmp, dst, err := w.stageTarget()
		if err != nil {
			return err
		}
		g0, err := w.k.generation()
		if err != nil {
			return err
		}
		start := time.Now()
		if err := os.Rename(tmp, dst); err != nil {
			return err
		}
		d, err := w.k.waitFor(w.ctx, g0, start, 60*time.Second, func() error {
			return w.k.expectBackend(w.ctx, f.Name, b.Name, weight, lb.Up)
		})
		if err != nil {
			return fmt.Errorf("reload of a one-line edit: %w", err)
		}
		w.row.add(agReload, d, true)
	}
	return nil
}

// measureAPI times API changes from the client's side (a new connection
// per request, as curl makes), each read back from the kernel afterwards.
func (w *agentWorld) measureAPI() error {
	ctx, a, row := w.ctx, w.agent, w.row
	f, b := w.target()
	backendURL := fmt.Sprintf("http://l4nft/v1/farms/%s/backends/%s", f.Name, b.Name)
	for range w.cfg.Reps {
		weight := w.toggleWeight()
		d, err := a.call(ctx, http.MethodPatch, backendURL, fmt.Sprintf(`{"weight":%d}`, weight), http.StatusOK)
		if err != nil {
			return err
		}
		if err := w.k.expectBackend(ctx, f.Name, b.Name, weight, lb.Up); err != nil {
			return fmt.Errorf("after PATCH weight: %w", err)
		}
		row.add(agPatchWeight, d, true)
	}
	for range w.cfg.Reps {
		for _, st := range []lb.BackendState{lb.Drain, lb.Up} {
			d, err := a.call(ctx, http.MethodPatch, backendURL, fmt.Sprintf(`{"state":%q}`, st), http.StatusOK)
			if err != nil {
				return err
			}
			if err := w.k.expectBackend(ctx, f.Name, b.Name, b.Weight, st); err != nil {
				return fmt.Errorf("after PATCH state: %w", err)
			}
			row.add(agPatchState, d, true)
		}
	}
	added := addedFarm(len(w.farms))
	body, err := json.Marshal(added)
	if err != nil {
		return err
	}
	for range w.cfg.Reps {
		d, err := a.call(ctx, http.MethodPost, "http://l4nft/v1/farms", string(body), http.StatusCreated)
		if err != nil {
			return err
		}
		if err := w.k.expectFarm(ctx, added.Name, len(added.Backends)); err != nil {
			return fmt.Errorf("after adding a farm: %w", err)
		}
		row.add(agAddFarm, d, true)
		d, err = a.call(ctx, http.MethodDelete, "http://l4nft/v1/farms/"+added.Name, "", http.StatusNoContent)
		if err != nil {
			return err
		}
		if err := w.k.expectFarm(ctx, added.Name, -1); err != nil {
			return fmt.Errorf("after deleting a farm: %w", err)
		}
		row.add(agDeleteFarm, d, true)
	}
	return nil
}

// measureReads times a /metrics scrape and an `l4nft status` run (the
// whole process), checking that each names the last farm.
func (w *agentWorld) measureReads() error {
	ctx, a, row := w.ctx, w.agent, w.row
	f, _ := w.target()
	for range w.cfg.Reps {
		start := time.Now()
		code, body, err := a.do(ctx, http.MethodGet, "http://l4nft/metrics", "")
		d := time.Since(start)
		if err != nil {
			return err
		}
		if code != http.StatusOK || !strings.Contains(string(body), `farm="`+f.Name+`"`) {
			return fmt.Errorf("GET /metrics: %d, %d bytes, farm %s missing", code, len(body), f.Name)
		}
		row.MetricsBytes = len(body)
		row.add(agMetrics, d, true)
	}
	for range w.cfg.Reps {
		var out bytes.Buffer
		cmd := exec.CommandContext(ctx, w.bin, "status", "--socket", a.socket)
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		d := time.Since(start)
		if err != nil || !strings.Contains(out.String(), f.Name) {
			return fmt.Errorf("l4nft status: %v, farm %s missing: %s", err, f.Name, shorten(out.String(), 300))
		}
		row.add(agStatus, d, true)
	}
	return nil
}

// manyChanges makes cfg.AgentChanges weight changes through the API, one
// after the other, and reads the daemon's memory afterwards.
func (w *agentWorld) manyChanges() error {
	f, b := w.target()
	url := fmt.Sprintf("http://l4nft/v1/farms/%s/backends/%s", f.Name, b.Name)
	w.row.BeforeRSS, w.row.BeforeHWM = w.agent.proc("VmRSS"), w.agent.proc("VmHWM")
	start := time.Now()
	for range w.cfg.AgentChanges {
		if _, err := w.agent.call(w.ctx, http.MethodPatch, url, fmt.Sprintf(`{"weight":%d}`, w.toggleWeight()), http.StatusOK); err != nil {
			return err
		}
	}
	w.row.ChangesTime = time.Since(start)
	w.row.Changes = w.cfg.AgentChanges
	if err := w.k.expectBackend(w.ctx, f.Name, b.Name, b.Weight, lb.Up); err != nil {
		return fmt.Errorf("after %d changes: %w", w.cfg.AgentChanges, err)
	}
	w.row.AfterRSS, w.row.AfterHWM = w.agent.proc("VmRSS"), w.agent.proc("VmHWM")
	return nil
}

func (r *agentRow) note(s string) {
	if !slices.Contains(r.Notes, s) {
		r.Notes = append(r.Notes, s)
	}
}

// agentConfigText is the agent's configuration file for farms: one line
// per backend, so that a weight change is a one-line edit.
func agentConfigText(farms []farm) string {
	var b strings.Builder
	b.Grow(len(farms) * 256)
	b.WriteString(agentMainText())
	b.WriteString("farms:\n")
	for _, f := range farms {
		writeFarmYAML(&b, f, "  - ")
	}
	return b.String()
}

// agentMainText is the main file of the directory layout (and the start
// of the single file): table and options.
func agentMainText() string {
	return fmt.Sprintf("# generated by integration/bench (agent suite)\ntable: %s\noptions:\n  mark_mask: %#08x\n", lb.DefaultTable, agentMarkMask)
}

// agentFarmText is farms.d/NAME.yaml of the directory layout: the farm
// mapping at the top level.
func agentFarmText(f farm) string {
	var b strings.Builder
	b.WriteString("# generated by integration/bench (agent suite)\n")
	writeFarmYAML(&b, f, "")
	return b.String()
}

// writeFarmYAML writes farm f as a YAML mapping whose first line starts
// with lead (a list item's "  - ", or nothing at the top level), one line
// per backend.
func writeFarmYAML(b *strings.Builder, f farm, lead string) {
	in := strings.Repeat(" ", len(lead))
	fmt.Fprintf(b, "%sname: %s\n%saddress: %s\n%sports: [\"%d\"]\n%sprotocol: tcp\n%smode: nat\n%ssource: %s\n%sbackends:\n",
		lead, f.Name, in, f.VIP, in, f.Port, in, in, in, f.VIP, in)
	for _, be := range f.Backends {
		fmt.Fprintf(b, "%s  - {name: %s, address: %s, port: %d, weight: %d}\n", in, be.Name, be.Addr, be.Port, be.Weight)
	}
}

// apiFarm is a farm in the API's (and the file's) schema.
type apiFarm struct {
	Name     string       `json:"name"`
	Address  string       `json:"address"`
	Ports    []string     `json:"ports"`
	Protocol string       `json:"protocol"`
	Mode     string       `json:"mode"`
	Source   string       `json:"source"`
	Backends []apiBackend `json:"backends"`
}

type apiBackend struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    uint16 `json:"port"`
	Weight  int    `json:"weight"`
}

// addedFarm is the farm the API adds and deletes: the service after the
// n configured ones, two backends of its own.
func addedFarm(n int) apiFarm {
	vip, port := farmService(n)
	return apiFarm{Name: "added", Address: vip.String(), Ports: []string{strconv.Itoa(int(port))}, Protocol: "tcp", Mode: "nat",
		Source: vip.String(), Backends: []apiBackend{
			{Name: "b0", Address: "203.0.113.250", Port: 80, Weight: 1},
			{Name: "b1", Address: "203.0.113.251", Port: 80, Weight: 2},
		}}
}

// kernelView reads the namespace's kernel state: the nf_tables generation
// (one small netlink round trip) and the installed table (lb.Open reads it
// back).
type kernelView struct {
	ns   *testbed.Namespace
	conn *nft.Conn
}

func newKernelView(ns *testbed.Namespace) (*kernelView, error) {
	c, err := nft.Open(nft.NetNSFd(ns.Fd()))
	if err != nil {
		return nil, fmt.Errorf("%s: connecting to nf_tables: %w", ns.Name(), err)
	}
	return &kernelView{ns: ns, conn: c}, nil
}

func (k *kernelView) close() { k.conn.Close() }

// generation returns the namespace's nf_tables ruleset generation, which
// the kernel increments with every committed transaction.
func (k *kernelView) generation() (uint32, error) { return k.conn.Generation() }

func (k *kernelView) waitFor(ctx context.Context, g0 uint32, start time.Time, timeout time.Duration, check func() error) (time.Duration, error) {
	seen := g0
	lastErr := errors.New("the generation did not change")
	for {
		g, err := k.generation()
		if err != nil {
			return 0, err
		}
		at := time.Since(start)
		if g != seen {
			if lastErr = check(); lastErr == nil {
				return at, nil
			}
			seen = g
		}
		if at > timeout {
			return 0, fmt.Errorf("not in the kernel after %v: %w", timeout, lastErr)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Microsecond):
		}
	}
}

func (k *kernelView) options() lb.Options {
	return lb.Options{NetNS: nft.NetNSFd(k.ns.Fd()), MarkMask: agentMarkMask}
}

// state reads the installed table back.
func (k *kernelView) state(ctx context.Context) (lb.State, error) {
	b, err := lb.Open(ctx, k.options())
	if err != nil {
		return lb.State{}, fmt.Errorf("reading the table back: %w", err)
	}
	defer b.Close()
	return b.State(), nil
}

// removeTable deletes the agent's table, if any.
func (k *kernelView) removeTable(ctx context.Context) error {
	b, err := lb.Open(ctx, k.options())
	if err != nil {
		return err
	}
	defer b.Close()
	return b.Remove(ctx)
}

// expectFarms checks that the kernel holds exactly the farms, by name and
// backend count.
func (k *kernelView) expectFarms(ctx context.Context, farms []farm) error {
	s, err := k.state(ctx)
	if err != nil {
		return err
	}
	if len(s.Farms) != len(farms) {
		return fmt.Errorf("the kernel holds %d farms, want %d", len(s.Farms), len(farms))
	}
	have := map[string]int{}
	for _, f := range s.Farms {
		have[f.Name] = len(f.Backends)
	}
	for _, f := range farms {
		if n, ok := have[f.Name]; !ok || n != len(f.Backends) {
			return fmt.Errorf("farm %s: %d backends in the kernel (present %t), want %d", f.Name, n, ok, len(f.Backends))
		}
	}
	return nil
}

// expectFarm checks that the kernel holds the farm with that many
// backends, or (backends < 0) does not hold it.
func (k *kernelView) expectFarm(ctx context.Context, name string, backends int) error {
	s, err := k.state(ctx)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(s.Farms, func(f lb.Farm) bool { return f.Name == name })
	switch {
	case backends < 0 && i >= 0:
		return fmt.Errorf("farm %s is still in the kernel", name)
	case backends >= 0 && i < 0:
		return fmt.Errorf("farm %s is not in the kernel", name)
	case i >= 0 && len(s.Farms[i].Backends) != backends:
		return fmt.Errorf("farm %s has %d backends in the kernel, want %d", name, len(s.Farms[i].Backends), backends)
	}
	return nil
}

// expectBackend checks one backend's weight and state in the kernel.
func (k *kernelView) expectBackend(ctx context.Context, farmName, name string, weight int, state lb.BackendState) error {
	s, err := k.state(ctx)
	if err != nil {
		return err
	}
	for _, f := range s.Farms {
		if f.Name != farmName {
			continue
		}
		for _, b := range f.Backends {
			if b.Name == name {
				if b.Weight != weight || b.State != state {
					return fmt.Errorf("backend %s/%s has weight %d, state %s in the kernel; want %d, %s", farmName, name, b.Weight, b.State, weight, state)
				}
				return nil
			}
		}
	}
	return fmt.Errorf("backend %s/%s is not in the kernel", farmName, name)
}

// agentProc is a running `l4nft run` inside the namespace.
type agentProc struct {
	cmd     *exec.Cmd
	socket  string
	logPath string
	client  *http.Client
	done    chan struct{}
	err     error
}

// startAgent runs `l4nft run` inside ns (through nsenter, which execs in
// place, so the process is the agent) and waits until its API says the
// kernel matches the file. The agent dies with the suite (SIGKILL on the
// death of the thread that started it, which stays locked until the agent
// exits), and is in a process group of its own, so that a Ctrl-C reaches
// only the suite, which then stops it.
func startAgent(ctx context.Context, ns *testbed.Namespace, bin, config, socket, logPath string, watch time.Duration) (*agentProc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := ns.Command(context.Background(), bin, "run", "--config", config, "--socket", socket,
		"--watch-interval", watch.String(), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	a := &agentProc{cmd: cmd, socket: socket, logPath: logPath, done: make(chan struct{}), client: &http.Client{
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		},
		Timeout: 5 * time.Minute,
	}}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the thread that forked the child: keep that
		// thread for as long as the child lives.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(a.done)
			return
		}
		started <- nil
		a.err = cmd.Wait()
		close(a.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting l4nft run: %w", err)
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		code, _, err := a.do(ctx, http.MethodGet, "http://l4nft/healthz", "")
		if err == nil && code == http.StatusOK {
			return a, nil
		}
		select {
		case <-a.done:
			return nil, a.withLog(fmt.Errorf("l4nft run exited before it was ready: %v", a.err))
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), a.stop())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(a.withLog(fmt.Errorf("l4nft run not ready after 5 minutes (last: %d, %v)", code, err)), a.stop())
		}
	}
}

// do sends one request on a new connection and reads the whole answer.
func (a *agentProc) do(ctx context.Context, method, url, body string) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// call times a request from sending it to the end of the answer, and
// checks the status code.
func (a *agentProc) call(ctx context.Context, method, url, body string, want int) (time.Duration, error) {
	start := time.Now()
	code, resp, err := a.do(ctx, method, url, body)
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, url, err)
	}
	if code != want {
		return 0, fmt.Errorf("%s %s %s: %d %s, want %d", method, url, body, code, shorten(string(resp), 300), want)
	}
	return d, nil
}

// proc reads a "kB" field of the agent's /proc/PID/status, in bytes.
func (a *agentProc) proc(field string) uint64 {
	return procStatusOf(fmt.Sprintf("/proc/%d/status", a.cmd.Process.Pid), field)
}

// withLog adds the end of the agent's log to err.
func (a *agentProc) withLog(err error) error {
	b, _ := os.ReadFile(a.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("%w\nagent log (end):\n%s", err, b)
}

// stop sends SIGTERM and waits for the agent to exit, killing it after 10
// seconds.
func (a *agentProc) stop() error {
	select {
	case <-a.done:
		return nil
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = a.cmd.Process.Kill()
	<-a.done
	return errors.New("l4nft run did not stop within 10 s of SIGTERM; killed")
}

// percentile returns the nearest-rank p-quantile of ts (p in (0, 1]).
func percentile(ts []time.Duration, p float64) time.Duration {
	if len(ts) == 0 {
		return 0
	}
	s := slices.Clone(ts)
	slices.Sort(s)
	i := int(math.Ceil(float64(len(s))*p)) - 1
	return s[min(max(i, 0), len(s)-1)]
}
