package config

import (
	"errors"
	"go.yaml.in/yaml/v3"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/l4nft/l4nft/agent/health"
	"github.com/l4nft/l4nft/lb"
)

const example = `table: l4nft                 # optional
farms:
  - name: web
    address: 198.51.100.250  # the virtual address, IPv4 or IPv6
    ports: ["443", "8000-8010"]
    protocol: tcp            # tcp | udp | tcp+udp | sctp | all
    mode: nat                # nat | dnat
    scheduler: weight        # weight (weighted random) is the default
    source: 198.51.100.250   # nat mode: SNAT source; omitted = masquerade
    health: {type: tcp, interval: 2s, timeout: 1s, rise: 2, fall: 3}   # tcp | http | none
    backends:
      - {name: app0, address: 203.0.113.10, port: 443, weight: 1, state: up}
      - {name: app1, address: 203.0.113.11, port: 443, weight: 2, state: up}
`

func mustParse(tb testing.TB, name, text string) *Config {
	tb.Helper()
	c, err := ParseAndValidate(name, []byte(text))
	if err != nil {
		tb.Fatalf("failed to parse %s: %v", name, err)
	}
	return c
}

var cmpConfig = cmp.Options{cmpopts.IgnoreUnexported(Config{}, Farm{}), cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}

func TestParseExample(t *testing.T) {
	c := mustParse(t, "l4nft.yaml", example)
	want := lb.State{Farms: []lb.Farm{{
		Name: "web", Address: netip.MustParseAddr("198.51.100.250"),
		Ports:  []lb.PortRange{{First: 443, Last: 443}, {First: 8000, Last: 8010}},
		Source: netip.MustParseAddr("198.51.100.250"),
		Backends: []lb.Backend{
			{Name: "app0", Address: netip.MustParseAddr("203.0.113.10"), Port: 443, Weight: 1},
			{Name: "app1", Address: netip.MustParseAddr("203.0.113.11"), Port: 443, Weight: 2},
		},
	}}}
	if diff := cmp.Diff(want, c.State(), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("State() mismatch (-want +got):\n%s", diff)
	}
	targets := c.HealthTargets()
	if len(targets) != 2 {
		t.Fatalf("got %d health targets, want 2", len(targets))
	}
	wantSpec := health.Spec{Type: health.TCP, Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if targets[1].Spec != wantSpec || targets[1].Addr != netip.MustParseAddrPort("203.0.113.11:443") {
		t.Errorf("target %+v, want %+v at 203.0.113.11:443", targets[1], wantSpec)
	}
}

func TestParseJSONKeepsLines(t *testing.T) {
	js := `{
  "farms": [
    {
      "name": "web",
      "address": "198.51.100.250",
      "ports": [80],
      "backends": [
        {"name": "app0", "address": "203.0.113.10", "weight": 0}
      ]
    }
  ]
}`
	_, err := ParseAndValidate("l4nft.json", []byte(js))
	want := []string{"l4nft.json:8: farms[web].backends[app0].weight: 0 is not a weight (want 1-10000); to stop new connections set state drain"}
	if diff := cmp.Diff(want, problemStrings(t, err)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
}

func problemStrings(tb testing.TB, err error) []string {
	tb.Helper()
	var ce *lb.ValidationError
	if !errors.As(err, &ce) {
		tb.Fatalf("got error %v, want an *lb.ValidationError", err)
	}
	if !errors.Is(err, lb.ErrInvalid) {
		tb.Errorf("error does not match lb.ErrInvalid")
	}
	var out []string
	for _, p := range ce.Problems {
		out = append(out, p.String())
	}
	return out
}

func TestEveryProblemHasItsLine(t *testing.T) {
	text := `table: l4nft
colour: blue
api:
  listen: 0.0.0.0:9100
farms:
  - name: web
    address: 198.51.100.250
    ports: ["443", "0", "nope"]
    protocol: icmp
    mode: dnat
    source: 198.51.100.250
    health: {type: http, interval: 1s, timeout: 2s}
    backends:
      - {name: app0, address: 203.0.113.10, port: 443, weight: 0}
      - name: app1
        address: 2001:db8:b::11
        wieght: 2
        state: sleeping
      - {name: app0, address: 203.0.113.12, health: {rise: 0}}
  - name: web
    address: 198.51.100.250
    ports: [443]
    backends: []
`
	_, err := ParseAndValidate("bad.yaml", []byte(text))
	want := []string{
		`bad.yaml:2: colour: unknown field "colour" (want one of api, farms, limits, options, table)`,
		`bad.yaml:4: api.listen: a TCP listener requires api.token_file`,
		`bad.yaml:8: farms[web].ports[1]: port 0 is outside 1-65535`,
		`bad.yaml:8: farms[web].ports[2]: port "nope" is not a number`,
		`bad.yaml:9: farms[web].protocol: unknown protocol "icmp" (want tcp, udp, tcp+udp, sctp, all)`,
		`bad.yaml:11: farms[web].source: dnat mode keeps the client's address; source applies to nat mode only`,
		`bad.yaml:12: farms[web].health.timeout: 2s is longer than the interval 1s`,
		`bad.yaml:14: farms[web].backends[app0].weight: 0 is not a weight (want 1-10000); to stop new connections set state drain`,
		`bad.yaml:16: farms[web].backends[app1].address: 2001:db8:b::11 is not of the same family as the farm's address 198.51.100.250`,
		`bad.yaml:17: farms[web].backends[app1].wieght: unknown field "wieght" (want one of address, health, max_connections, name, port, priority, state, weight)`,
		`bad.yaml:18: farms[web].backends[app1].state: unknown state "sleeping" (want up, drain, down)`,
		`bad.yaml:19: farms[web].backends[app0].health.rise: 0 is outside 1-1000`,
		`bad.yaml:19: farms[web].backends[app0].name: duplicate backend name (also backends[0])`,
		`bad.yaml:20: farms[web].name: duplicate farm name (also farms[0])`,
		`bad.yaml:22: farms[web].ports: 198.51.100.250 tcp port 443 is already served by farm "web" (farms[0]) port 443`,
	}
	if diff := cmp.Diff(want, problemStrings(t, err)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
}

func TestSyntaxAndEmpty(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"empty", "", "empty.yaml: the file is empty (write `farms: []` to serve nothing)"},
		{"comment only", "# nothing\n", "comment only.yaml:"},
		{"syntax", "farms:\n  - name: web\n   address: x\n", "syntax.yaml:1: "},
		{"not a mapping", "- a\n- b\n", "not a mapping.yaml:1: want a mapping of fields"},
		{"two documents", "farms: []\n---\nfarms: []\n", "two documents.yaml:2: more than one YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAndValidate(tc.name+".yaml", []byte(tc.text))
			got := problemStrings(t, err)
			if len(got) != 1 || !strings.HasPrefix(got[0], tc.want) {
				t.Errorf("got %q, want one problem starting with %q", got, tc.want)
			}
		})
	}
	c := mustParse(t, "none.yaml", "farms: []\n")
	if len(c.Farms) != 0 {
		t.Errorf("farms: [] gave %d farms", len(c.Farms))
	}
}

func TestHealthOverride(t *testing.T) {
	c := mustParse(t, "h.yaml", `farms:
  - name: web
    address: 2001:db8:f::250
    ports: ["8000-8010"]
    health: {type: http, interval: 500ms, timeout: 200ms, path: /healthz, expect: "200"}
    backends:
      - {name: app0, address: "2001:db8:b::10"}
      - {name: app1, address: "2001:db8:b::11", port: 8080, health: {path: /ready, fall: 5}}
      - {name: app2, address: "2001:db8:b::12", health: {type: none}}
`)
	f := c.Farms[0]
	s0, a0, _ := f.HealthSpec(f.Backends[0])
	s1, a1, _ := f.HealthSpec(f.Backends[1])
	s2, _, _ := f.HealthSpec(f.Backends[2])
	if s0.Path != "/healthz" || s0.Fall != health.DefaultFall || a0 != netip.MustParseAddrPort("[2001:db8:b::10]:8000") || s0.Expect != (health.StatusRange{Min: 200, Max: 200}) {
		t.Errorf("app0: %+v at %s", s0, a0)
	}
	if s1.Path != "/ready" || s1.Fall != 5 || s1.Interval != 500*time.Millisecond || a1.Port() != 8080 {
		t.Errorf("app1: %+v at %s", s1, a1)
	}
	if s2.Type != health.None || len(c.HealthTargets()) != 2 {
		t.Errorf("app2: %+v; %d targets, want 2", s2, len(c.HealthTargets()))
	}
}

func TestParseFarm(t *testing.T) {
	f, err := ParseFarm("request body", []byte(`{"name": "web", "address": "198.51.100.250", "ports": ["80"], "bogus": 1,
 "backends": [{"name": "a", "address": "203.0.113.10"}]}`), Limits{})
	want := []string{`request body:1: farms[web].bogus: unknown field "bogus" (want one of address, allow, backends, deny, hash_fields, health, helpers, limits, mode, name, persistence, ports, protocol, scheduler, slots, source, tcp_strict)`}
	if diff := cmp.Diff(want, problemStrings(t, err)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
	if f.Name != "web" || len(f.Backends) != 1 || f.Backends[0].Weight != 1 {
		t.Errorf("farm parsed as %+v", f)
	}
}

func TestRoundTrip(t *testing.T) {
	c := mustParse(t, "l4nft.yaml", example+`options: {mark_mask: 0x00ff0000, flush_conntrack: true}
api: {socket: /tmp/x.sock, listen: "127.0.0.1:9100", token_file: /etc/token}
`)
	for _, name := range []string{"out.yaml", "out.json"} {
		b, err := c.Marshal(name)
		if err != nil {
			t.Fatalf("failed to marshal: %v", err)
		}
		back := mustParse(t, name, string(b))
		if diff := cmp.Diff(c, back, cmpConfig); diff != "" {
			t.Errorf("%s: round trip mismatch (-want +got):\n%s\n%s", name, diff, b)
		}
	}
	b := c.EncodeYAML()
	for _, want := range []string{"mark_mask: \"0x00ff0000\"", "- \"443\"", "- 8000-8010", "interval: 2s"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("YAML lacks %q:\n%s", want, b)
		}
	}
	// yaml.Marshal of a Config writes what Parse reads back.
	m, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(c, mustParse(t, "marshalled.yaml", string(m)), cmpConfig); diff != "" {
		t.Errorf("yaml.Marshal round trip mismatch (-want +got):\n%s\n%s", diff, m)
	}
}

// An SCTP farm and a farm of every protocol on one address: parsed,
// written and read back the same; an all farm's ports and backend ports,
// and a health check with no port to check, are problems on their lines.
func TestSCTPAndAllProtocols(t *testing.T) {
	const text = `farms:
  - name: sig
    address: 198.51.100.250
    ports: ["2905"]
    protocol: sctp
    backends:
      - {name: a, address: 203.0.113.10, port: 2906}
  - name: rest
    address: 198.51.100.250
    protocol: all
    mode: dnat
    health: {type: tcp, port: 22}
    backends:
      - {name: a, address: 203.0.113.10}
      - {name: b, address: 203.0.113.11}
`
	c := mustParse(t, "p.yaml", text)
	st := c.State()
	if got := []lb.Protocol{st.Farms[0].Protocol, st.Farms[1].Protocol}; got[0] != lb.SCTP || got[1] != lb.AllProtocols {
		t.Fatalf("protocols parsed as %v, want sctp and all", got)
	}
	for _, name := range []string{"out.yaml", "out.json"} {
		b, err := c.Marshal(name)
		if err != nil {
			t.Fatalf("failed to marshal: %v", err)
		}
		if diff := cmp.Diff(c, mustParse(t, name, string(b)), cmpConfig, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("%s: round trip mismatch (-want +got):\n%s\n%s", name, diff, b)
		}
	}

	for _, tt := range []struct {
		name     string
		old, new string
		want     string
	}{
		{"ports", "    protocol: all\n", "    protocol: all\n    ports: [\"80\"]\n",
			`bad.yaml:11: farms[rest].ports: protocol all serves every port of the address; ports apply to tcp, udp, tcp+udp and sctp only`},
		{"backend port", "{name: b, address: 203.0.113.11}", "{name: b, address: 203.0.113.11, port: 8080}",
			`bad.yaml:15: farms[rest].backends[b].port: 8080: protocol all keeps the port the client connected to; want 0 (omitted)`},
		{"health without a port", "{type: tcp, port: 22}", "{type: tcp}",
			`bad.yaml:12: farms[rest].health.port: protocol all has no port to check: set health.port`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAndValidate("bad.yaml", []byte(strings.Replace(text, tt.old, tt.new, 1)))
			if diff := cmp.Diff([]string{tt.want}, problemStrings(t, err)); diff != "" {
				t.Errorf("problems mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "l4nft.yaml")
	if err := os.WriteFile(path, []byte("farms: []\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(link, []byte(example), 0o600); err != nil {
		t.Fatalf("failed to write: %v", err)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode after write: %v, %v; want 0640", fi.Mode(), err)
	}
	if got, _ := os.ReadFile(link); string(got) != example {
		t.Errorf("content not replaced through the link")
	}
	if fi, _ := os.Lstat(link); fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symbolic link was replaced by a file")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		t.Errorf("temporary files left behind: %v", entries)
	}
}
