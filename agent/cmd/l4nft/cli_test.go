package main

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

// mustRun runs the command line in-process and returns the exit code,
// stdout and stderr.
func mustRun(tb testing.TB, args ...string) (int, string, string) {
	tb.Helper()
	var out, errOut bytes.Buffer
	e := &env{stdout: &out, stderr: &errOut, getenv: func(string) string { return "" },
		notify: func(chan<- os.Signal, ...os.Signal) {}, stop: func(chan<- os.Signal) {}}
	code := run(context.Background(), e, args)
	return code, out.String(), errOut.String()
}

func TestHelpExitsZero(t *testing.T) {
	for _, c := range commands() {
		for _, flag := range []string{"-help", "-h", "--help"} {
			code, out, _ := mustRun(t, c.name, flag)
			if code != 0 {
				t.Errorf("l4nft %s %s: exit %d, want 0", c.name, flag, code)
			}
			if !strings.HasPrefix(out, "usage: l4nft "+c.name) {
				t.Errorf("l4nft %s %s printed %q, want usage on stdout", c.name, flag, out)
			}
		}
		if code, out, _ := mustRun(t, "help", c.name); code != 0 || !strings.Contains(out, "usage: l4nft "+c.name) {
			t.Errorf("l4nft help %s: exit %d, output %q", c.name, code, out)
		}
	}
	if code, out, _ := mustRun(t, "help"); code != 0 || !strings.Contains(out, "demo") {
		t.Errorf("l4nft help: exit %d, output %q", code, out)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run"},
		{"run", "--config"},
		{"run", "--config", "x.yaml", "extra"},
		{"run", "--config", "x.yaml", "--log-format", "xml"},
		{"apply"},
		{"apply", "a.yaml", "b.yaml"},
		{"apply", "--bogus", "a.yaml"},
		{"validate"},
		{"render"},
		{"render", "a", "b"},
		{"status", "extra"},
		{"status", "--json=maybe"},
		{"backend", "web"},
		{"backend", "web", "app0"},
		{"backend", "web", "app0", "--weight", "x"},
		{"backend", "web", "app0", "--state", "sleeping"},
		{"demo", "now"},
		{"demo", "--connections", "0"},
	} {
		if code, _, errOut := mustRun(t, args...); code != 2 {
			t.Errorf("l4nft %q: exit %d, want 2 (stderr %q)", args, code, errOut)
		} else if errOut == "" {
			t.Errorf("l4nft %q: exit 2 with nothing on stderr", args)
		}
	}
}

const goodConfig = `farms:
  - name: web
    address: 198.51.100.250
    ports: ["80", "8000-8010"]
    source: 198.51.100.250
    backends:
      - {name: app0, address: 203.0.113.10, port: 80, weight: 1}
      - {name: app1, address: 203.0.113.11, port: 80, weight: 2}
`

func mustWrite(tb testing.TB, name, content string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatalf("failed to write %s: %v", path, err)
	}
	return path
}

func TestValidate(t *testing.T) {
	good := mustWrite(t, "good.yaml", goodConfig)
	if code, out, _ := mustRun(t, "validate", good); code != 0 || !strings.Contains(out, "valid (1 farms, 2 backends)") {
		t.Errorf("validate good: exit %d, output %q", code, out)
	}
	bad := mustWrite(t, "bad.yaml", strings.Replace(strings.Replace(goodConfig, "weight: 2", "weight: 0", 1), "source:", "sauce:", 1))
	code, out, _ := mustRun(t, "validate", bad)
	if code != 1 {
		t.Errorf("validate bad: exit %d, want 1", code)
	}
	for _, want := range []string{
		bad + `:5: farms[web].sauce: unknown field "sauce"`,
		bad + ":8: farms[web].backends[app1].weight: 0 is not a weight",
		"2 problems found",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("validate bad: output lacks %q:\n%s", want, out)
		}
	}
	if code, out, _ := mustRun(t, "validate", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || !strings.Contains(out, "no such file") {
		t.Errorf("validate missing: exit %d, want 1 (%s)", code, out)
	}
}

func TestRender(t *testing.T) {
	good := mustWrite(t, "good.yaml", goodConfig)
	code, out, errOut := mustRun(t, "render", good)
	if code != 0 {
		t.Fatalf("render: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"table inet l4nft {", "198.51.100.250 . tcp . 80", "203.0.113.11 . 80"} {
		if !strings.Contains(out, want) {
			t.Errorf("render output lacks %q", want)
		}
	}
	bad := mustWrite(t, "bad.yaml", "farms: [{name: web}]\n")
	if code, _, errOut := mustRun(t, "render", bad); code != 1 || !strings.Contains(errOut, "bad.yaml:1: farms[web].address") {
		t.Errorf("render bad: exit %d, stderr %q", code, errOut)
	}
}

func TestStatusWithoutAgent(t *testing.T) {
	code, _, errOut := mustRun(t, "status", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if code != 1 || !strings.Contains(errOut, "connecting to the agent") {
		t.Errorf("status without an agent: exit %d, stderr %q", code, errOut)
	}
}

func TestPrintStatus(t *testing.T) {
	now := time.Now()
	st := daemon.Status{Table: "l4nft", Config: "/etc/l4nft.yaml", StartedAt: now.Add(-time.Minute),
		LastApply:   daemon.ApplyInfo{Time: now, Reason: "start", Changed: true, Rebuilt: true, Messages: 41},
		LastChange:  daemon.ApplyInfo{Time: now, Reason: "start", Changed: true, Rebuilt: true, Messages: 41},
		ConfigError: &daemon.ConfigError{Time: now, Message: "bad"},
		Farms: []daemon.FarmStatus{{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "web"}}, Backends: []daemon.BackendStatus{
			{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app0", Weight: 1}, Connections: 5}, Installed: true, Health: &health.Status{Type: health.TCP}},
			{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app1", Weight: 2}}, Installed: true},
		}}, {FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "sticky", Scheduler: lb.Consistent, HashFields: []lb.HashField{lb.SrcIP, lb.DstPort},
			Persistence: &lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(5 * time.Minute)}}, PersistenceEntries: 42}, Backends: []daemon.BackendStatus{
			{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app2", Weight: 1}}, Installed: true},
			{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app3", Weight: 1}}, Installed: true},
		}}, {FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "empty", Scheduler: lb.RoundRobin}}}}}
	st.Farms = append(st.Farms, daemon.FarmStatus{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "rest",
		Address: netip.MustParseAddr("198.51.100.250"), Protocol: lb.AllProtocols}}})
	deny := []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
	st.Farms = append(st.Farms, daemon.FarmStatus{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "guarded", Deny: deny,
		Limits: &lb.Limits{NewPerSecond: 100}}, Rejected: lb.Rejections{Denied: 2, Rate: 10}}, Backends: []daemon.BackendStatus{
		{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app4", Weight: 1}}, Installed: true},
		{BackendStatus: lb.BackendStatus{Backend: lb.Backend{Name: "app5", Weight: 1}}, Installed: true},
	}}, daemon.FarmStatus{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "strict", TCPStrict: true}}},
		daemon.FarmStatus{FarmStatus: lb.FarmStatus{Farm: lb.Farm{Name: "unlimited", Limits: &lb.Limits{Action: lb.Drop}}}})
	var b bytes.Buffer
	printStatus(&b, st, now)
	for _, want := range []string{"CONFIG REJECTED", "tcp FAIL", "table rebuilt", "app1"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	// The scheduler, persistence and rejections on each farm's first
	// line, in their columns.
	lines := map[string]string{} // by the first cell
	var header string
	for l := range strings.SplitSeq(b.String(), "\n") {
		switch first, _, _ := strings.Cut(l, " "); {
		case first == "FARM":
			header = l
		case header != "" && first != "":
			lines[first] = l
		}
	}
	if f := strings.Fields(lines["rest"]); len(f) < 3 || f[1] != "198.51.100.250" || f[2] != "all" {
		t.Errorf("a farm of every protocol: want its address and \"all\", got %q", lines["rest"])
	}
	col := func(farm, name string) string { // the cell under the column's heading
		t.Helper()
		start := strings.Index(header, " "+name+" ") + 1
		end := start + len(name) + strings.IndexFunc(header[start+len(name):], func(r rune) bool { return r != ' ' })
		l, ok := lines[farm]
		if start == 0 || !ok || len(l) < end {
			t.Fatalf("no column %s for farm %s:\n%s", name, farm, b.String())
		}
		return strings.TrimSpace(l[start:end])
	}
	for _, c := range []struct{ farm, sched, persist, rejected string }{
		{"web", "weight", "-", "-"},
		{"sticky", "consistent src_ip,dst_port", "42 src_ip_port 5m0s", "-"},
		{"empty", "roundrobin", "-", "-"},
		{"guarded", "weight", "-", "12 denied=2,rate=10"},
		{"strict", "weight", "-", "0"},
		{"unlimited", "weight", "-", "-"}, // limits of nothing count nothing
	} {
		if got := col(c.farm, "SCHEDULER"); got != c.sched {
			t.Errorf("farm %s: scheduler %q, want %q", c.farm, got, c.sched)
		}
		if got := col(c.farm, "PERSIST"); got != c.persist {
			t.Errorf("farm %s: persist %q, want %q", c.farm, got, c.persist)
		}
		if got := col(c.farm, "REJECTED"); got != c.rejected {
			t.Errorf("farm %s: rejected %q, want %q", c.farm, got, c.rejected)
		}
	}
	if _, ok := lines["app3"]; ok || strings.Count(b.String(), "consistent") != 1 || strings.Count(b.String(), "denied=") != 1 {
		t.Errorf("farm cells repeated on a farm's later lines:\n%s", b.String())
	}
}
