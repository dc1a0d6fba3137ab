package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l4nft/l4nft/integration/testbed"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// TestMain lets the test binary serve as the load generator child, as the
// suite's own binary does.
func TestMain(m *testing.M) {
	if isLoadChild() {
		os.Exit(loadChildMain(os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("requires root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
	}
}

// TestSmoke runs the whole suite at tiny sizes and durations, as
// `go run ./integration/bench -smoke` does, and checks that it works: no
// errors, every variant at every size moved traffic to the backends it
// should, the distribution runs saw every backend of the farm, and the
// report and the plot have every part. It never checks how fast anything
// is.
func TestSmoke(t *testing.T) {
	requireRoot(t)
	out := filepath.Join(t.TempDir(), "RESULTS.md")
	cfg, err := parseFlags([]string{"-smoke", "-out", out, "-variants", strings.Join(allVariants, ",")}, io.Discard)
	if err != nil {
		t.Fatalf("failed to parse flags: %v", err)
	}
	res, err := runSuite(t.Context(), cfg, t.Logf)
	if err != nil {
		t.Fatalf("failed to run suite: %v", err)
	}
	if err := writeReport(cfg, res); err != nil {
		t.Fatalf("failed to write report: %v", err)
	}

	for _, s := range cfg.Sizes {
		for _, v := range cfg.Variants {
			c := res.DataPlane.Cells[s][v]
			for _, keep := range []bool{false, true} {
				sum := c.summary(keep)
				if sum.Rate <= 0 || sum.Errors != 0 {
					t.Errorf("%s at S=%d (keep-alive %t): %.0f ops/s, %d errors (%s)", v, s, keep, sum.Rate, sum.Errors, sum.FirstErr)
				}
				want := []string{"backend0", "backend1"}
				if v == varFloor || v == varDirect {
					want = want[:1]
				}
				if !keep && len(sum.Split) != len(want) {
					t.Errorf("%s at S=%d: answered by %v, want %v", v, s, sum.Split, want)
				}
			}
		}
	}
	for _, r := range res.ControlPlane {
		if r.Err != "" || len(r.Times[opInstall]) == 0 || len(r.Times[opWeight]) == 0 {
			t.Errorf("control plane %s at %d x %d: %d installs, %d changes timed (%s)", r.System, r.Farms, r.Backends, len(r.Times[opInstall]), len(r.Times[opWeight]), r.Err)
		}
		if r.System == varL4nft && r.ReapplyChanged {
			t.Errorf("l4nft at %d farms: re-applying an unchanged state sent something", r.Farms)
		}
		if r.System == varL4nft {
			for _, op := range []string{opSFWeight, opSFState, opSFAdd, opSFRemove, opRemoveFarm, opSetFarmNew, opFarmReplace, opOpen, opOpenState, opStatus} {
				if len(r.Times[op]) == 0 {
					t.Errorf("l4nft at %d farms: %s not timed", r.Farms, op)
				}
			}
			if r.StatusFarms != r.Farms {
				t.Errorf("l4nft at %d farms: Status reported %d farms", r.Farms, r.StatusFarms)
			}
		}
	}
	if len(res.Distribution) != 2*len(distWeightings) {
		t.Errorf("%d distribution runs, want %d", len(res.Distribution), 2*len(distWeightings))
	}
	for _, r := range res.Distribution {
		if r.Errors != 0 || len(r.Counts) != len(r.Weights) || r.Counts[len(r.Counts)-1] == 0 {
			t.Errorf("distribution %s %v: counts %v, %d errors (%s)", r.System, r.Weights, r.Counts, r.Errors, r.FirstErr)
		}
	}

	md, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("failed to read report: %v", err)
	}
	report := string(md)
	for _, h := range []string{headSmokeTag, headTargets, headConn, headKeep, headControl, headLibChanges, headDist, headLimits, headMethod} {
		if !strings.Contains(report, h) {
			t.Errorf("report lacks %q", h)
		}
	}
	svg, err := os.ReadFile(plotPath(out))
	if err != nil || !strings.HasPrefix(string(svg), "<svg") || !strings.HasSuffix(string(svg), "</svg>\n") {
		t.Errorf("plot missing or malformed (err %v)", err)
	}
	if t.Failed() {
		t.Logf("report:\n%s", report)
	}
}

func TestSeedProbabilitiesGiveWeightShares(t *testing.T) {
	for _, ws := range [][]int{{1, 1}, {1, 2, 3, 4}, {1, 1000}, {5}, {3, 1, 7, 7, 2}} {
		p := seedProbabilities(ws)
		if p[len(p)-1] != 1 {
			t.Errorf("weights %v: last backend's probability %v, want 1", ws, p[len(p)-1])
		}
		total := 0
		for _, w := range ws {
			total += w
		}
		// Rules run from the last backend to the first; the last rule that
		// matches wins, so backend i wins when its rule matches and no rule
		// of backends 0..i-1 does.
		for i, w := range ws {
			share := p[i]
			for j := range i {
				share *= 1 - p[j]
			}
			if want := float64(w) / float64(total); math.Abs(share-want) > 1e-12 {
				t.Errorf("weights %v: backend %d share %v, want %v", ws, i, share, want)
			}
		}
	}
}

func TestSeedRulesMatchArticle(t *testing.T) {
	bs := []backend{{Name: "b0", Addr: ip("192.0.2.10"), Port: 443, Weight: 1}, {Name: "b1", Addr: ip("192.0.2.11"), Port: 443, Weight: 1}}
	farms := makeFarms(2, bs)
	got := seedRules(farms)
	for _, want := range []string{
		"-A PREROUTING -j CONNMARK --restore-mark",
		// Farm 0: backend 1 with probability 1 first, backend 0 with 0.5 after.
		"-A PREROUTING -d 198.51.100.1/32 -p tcp -m statistic --mode random --probability 1.00000000000 -m multiport --dports 10000 -m comment --comment \" FARM_f000000_1_ \" -j MARK --set-xmark 0x201/0xffffffff\n" +
			"-A PREROUTING -d 198.51.100.1/32 -p tcp -m statistic --mode random --probability 0.50000000000 -m multiport --dports 10000 -m comment --comment \" FARM_f000000_0_ \" -j MARK --set-xmark 0x200/0xffffffff\n" +
			"-A PREROUTING -d 198.51.100.1/32 -p tcp -m statistic --mode random --probability 1.00000000000 -m multiport --dports 10001 -m comment --comment \" FARM_f000001_1_ \" -j MARK --set-xmark 0x203/0xffffffff\n",
		"-A PREROUTING -m state --state NEW -j CONNMARK --save-mark",
		"-A PREROUTING -p tcp -m mark --mark 0x202 -m comment --comment \" FARM_f000001_0_ \" -j DNAT --to-destination 192.0.2.10:443\n",
		"-A POSTROUTING -p tcp -m mark --mark 0x203 -m comment --comment \" FARM_f000001_1_ \" -j SNAT --to-source 198.51.100.1\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("seed rules lack\n%s\ngot:\n%s", want, got)
		}
	}
	// Rule 1 is the restore; farm 1's rules are 4 (backend 1) and 5 (backend 0).
	change := seedWeightChange(farms, 0, 3)
	if want := "-R PREROUTING 5 -d 198.51.100.1/32 -p tcp -m statistic --mode random --probability 0.75000000000 -m multiport --dports 10001"; !strings.Contains(change, want) {
		t.Errorf("weight change = %q, want it to contain %q", change, want)
	}
}

func TestFarmServicesAreDistinct(t *testing.T) {
	seen := map[string]int{}
	for i := range 100000 {
		vip, port := farmService(i)
		k := fmt.Sprintf("%s:%d", vip, port)
		if j, dup := seen[k]; dup {
			t.Fatalf("farms %d and %d share %s", j, i, k)
		}
		seen[k] = i
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// BenchmarkApplyInstall measures lb.Open + Apply of S farms of 2 backends
// into a namespace without the table.
func BenchmarkApplyInstall(b *testing.B) {
	for _, size := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("farms=%d", size), func(b *testing.B) {
			ns := mustNamespace(b)
			state := lbState(wideFarms(size, 2))
			opts := lb.Options{NetNS: nft.NetNSFd(ns.Fd()), MarkMask: wideMarkMask}
			ctx := context.Background()
			for b.Loop() {
				bal, err := lb.Open(ctx, opts)
				if err != nil {
					b.Fatalf("failed to open: %v", err)
				}
				if _, err := bal.Apply(ctx, state); err != nil {
					b.Fatalf("failed to apply: %v", err)
				}
				b.StopTimer()
				if err := bal.Remove(ctx); err != nil {
					b.Fatalf("failed to remove: %v", err)
				}
				bal.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkApplyWeightChange measures one backend weight change with S
// farms installed.
func BenchmarkApplyWeightChange(b *testing.B) {
	for _, size := range []int{1, 100, 1000, 10000} {
		b.Run(fmt.Sprintf("farms=%d", size), func(b *testing.B) {
			ns := mustNamespace(b)
			state := lbState(wideFarms(size, 2))
			ctx := context.Background()
			bal, err := lb.Open(ctx, lb.Options{NetNS: nft.NetNSFd(ns.Fd()), MarkMask: wideMarkMask})
			if err != nil {
				b.Fatalf("failed to open: %v", err)
			}
			defer bal.Close()
			if _, err := bal.Apply(ctx, state); err != nil {
				b.Fatalf("failed to apply: %v", err)
			}
			i := 0
			for b.Loop() {
				b.StopTimer()
				s := cloneLBState(state)
				i++
				s.Farms[len(s.Farms)-1].Backends[0].Weight = 1 + i%2
				b.StartTimer()
				if _, err := bal.Apply(ctx, s); err != nil {
					b.Fatalf("failed to apply: %v", err)
				}
			}
		})
	}
}

func mustNamespace(tb testing.TB) *testbed.Namespace {
	tb.Helper()
	requireRoot(tb)
	ns, err := testbed.NewNamespace("bench", "")
	if err != nil {
		tb.Fatalf("failed to create namespace: %v", err)
	}
	tb.Cleanup(func() { ns.Close() })
	return ns
}
