package config

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/l4nft/l4nft/lb"
)

// admissionFarm returns a file with one farm of two backends whose head
// (address, ports, protocol) and options are lines, written from line 3
// on.
func admissionFarm(lines string) string {
	var b strings.Builder
	b.WriteString("farms:\n  - name: web\n")
	if !strings.Contains(lines, "address:") {
		lines = "address: 198.51.100.250\nports: [80]\n" + lines
	}
	for l := range strings.SplitSeq(lines, "\n") {
		if l != "" {
			b.WriteString("    " + l + "\n")
		}
	}
	backends := "    backends:\n      - {name: app0, address: 203.0.113.10}\n      - {name: app1, address: 203.0.113.11}\n"
	if strings.Contains(lines, "address: 2001:") {
		backends = strings.ReplaceAll(backends, "203.0.113.1", "2001:db8:b::1")
	}
	b.WriteString(backends)
	return b.String()
}

// admission returns the admission options of f.
func admission(f lb.Farm) lb.Farm {
	return lb.Farm{Limits: f.Limits, TCPStrict: f.TCPStrict, Allow: f.Allow, Deny: f.Deny, Helpers: f.Helpers}
}

var cmpAddrs = cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}

func prefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

// The admission options: limits, tcp_strict, allow, deny and helpers are
// read into the lb.Farm as written, and written so that they read back
// the same.
func TestParseAdmissionOptions(t *testing.T) {
	for _, tc := range []struct {
		name, lines string
		want        lb.Farm // Limits, TCPStrict, Allow, Deny, Helpers
	}{
		{"none", "", lb.Farm{}},
		{"limits", "limits: {new_per_second: 1000, burst: 50, new_per_client_per_second: 10, established_per_client: 20, action: drop}",
			lb.Farm{Limits: &lb.Limits{NewPerSecond: 1000, Burst: 50, NewPerClientPerSecond: 10, EstablishedPerClient: 20, Action: lb.Drop}}},
		{"limits, block mapping, action defaults to reject", "limits:\n  established_per_client: 5",
			lb.Farm{Limits: &lb.Limits{EstablishedPerClient: 5}}},
		{"limits of nothing", "limits: {}", lb.Farm{Limits: &lb.Limits{}}},
		{"null limits are none", "limits: null", lb.Farm{}},
		{"limits of 0 are no limit", "limits: {new_per_second: 0, action: reject}", lb.Farm{Limits: &lb.Limits{}}},
		{"tcp_strict", "tcp_strict: true", lb.Farm{TCPStrict: true}},
		{"tcp_strict false", "tcp_strict: false", lb.Farm{}},
		{"tcp_strict on udp", "address: 198.51.100.250\nports: [53]\nprotocol: udp\ntcp_strict: true", lb.Farm{TCPStrict: true}},
		{"allow, block list", "allow:\n  - 192.0.2.0/24\n  - \"203.0.113.0/25\"",
			lb.Farm{Allow: prefixes("192.0.2.0/24", "203.0.113.0/25")}},
		{"allow, flow list", "allow: [192.0.2.0/24, 10.0.0.0/8]", lb.Farm{Allow: prefixes("192.0.2.0/24", "10.0.0.0/8")}},
		{"allow, one prefix, not a list", "allow: 192.0.2.0/24", lb.Farm{Allow: prefixes("192.0.2.0/24")}},
		{"an address is its own prefix", "deny: [192.0.2.7, 192.0.2.8/32]", lb.Farm{Deny: prefixes("192.0.2.7/32", "192.0.2.8/32")}},
		{"host bits are kept as written", "deny: [192.0.2.7/24]", lb.Farm{Deny: prefixes("192.0.2.7/24")}},
		{"empty lists are none", "allow: []\ndeny: []", lb.Farm{}},
		{"allow and deny", "allow: [192.0.2.0/24]\ndeny: [192.0.2.128/25]",
			lb.Farm{Allow: prefixes("192.0.2.0/24"), Deny: prefixes("192.0.2.128/25")}},
		{"IPv6", "address: 2001:db8::250\nports: [80]\nallow: [\"2001:db8:c::/48\", \"::/0\"]\ndeny: [\"2001:db8:c::1\"]",
			lb.Farm{Allow: prefixes("2001:db8:c::/48", "::/0"), Deny: prefixes("2001:db8:c::1/128")}},
		{"helpers", "helpers: [ftp, sip]", lb.Farm{Helpers: []lb.Helper{lb.FTP, lb.SIP}}},
		{"one helper, not a list", "helpers: ftp", lb.Farm{Helpers: []lb.Helper{lb.FTP}}},
		{"helpers on udp", "address: 198.51.100.250\nports: [69]\nprotocol: udp\nhelpers:\n  - tftp\n  - sip",
			lb.Farm{Helpers: []lb.Helper{lb.TFTP, lb.SIP}}},
		{"empty helpers are none", "helpers: []", lb.Farm{}},
		{"everything", "limits: {new_per_second: 100, action: drop}\ntcp_strict: true\nallow: [192.0.2.0/24]\ndeny: [192.0.2.9]\nhelpers: [ftp]",
			lb.Farm{Limits: &lb.Limits{NewPerSecond: 100, Action: lb.Drop}, TCPStrict: true, Allow: prefixes("192.0.2.0/24"),
				Deny: prefixes("192.0.2.9/32"), Helpers: []lb.Helper{lb.FTP}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, "t.yaml", admissionFarm(tc.lines))
			if diff := cmp.Diff(tc.want, admission(c.Farms[0].LB()), cmpAddrs); diff != "" {
				t.Errorf("farm mismatch (-want +got):\n%s", diff)
			}
			// What is written reads back the same, in YAML and JSON, as a
			// file, a farm file and through yaml.Marshal.
			for _, name := range []string{"out.yaml", "out.json"} {
				data, err := c.Marshal(name)
				if err != nil {
					t.Fatalf("failed to marshal: %v", err)
				}
				back := mustParse(t, name, string(data))
				if !back.Farms[0].Equal(&c.Farms[0]) {
					t.Errorf("%s round trip: %+v, want %+v\n%s", name, back.Farms[0].Farm, c.Farms[0].Farm, data)
				}
				file := "farms.d/web" + name[3:]
				f, err := ParseFarmFile(file, c.Farms[0].MarshalFarmFile(file))
				if err != nil || !f.Equal(&c.Farms[0]) {
					t.Errorf("%s round trip: %+v (%v), want %+v", file, f.Farm, err, c.Farms[0].Farm)
				}
			}
			m, err := yaml.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if back := mustParse(t, "marshalled.yaml", string(m)); !back.Farms[0].Equal(&c.Farms[0]) {
				t.Errorf("yaml.Marshal round trip: %+v, want %+v\n%s", back.Farms[0].Farm, c.Farms[0].Farm, m)
			}
		})
	}
}

// The writer's form: limits as a mapping with its action, lists of
// prefixes as block lists of quoted strings, helpers as a flow list;
// nothing for options not set.
func TestEmitAdmissionOptions(t *testing.T) {
	c := mustParse(t, "t.yaml", admissionFarm("limits: {new_per_client_per_second: 10}\ntcp_strict: true\n"+
		"allow: [192.0.2.0/24, 198.51.100.7]\ndeny: 10.0.0.0/8\nhelpers: [sip, ftp]"))
	want := `    limits:
      new_per_client_per_second: 10
      action: reject
    tcp_strict: true
    allow:
      - "192.0.2.0/24"
      - "198.51.100.7/32"
    deny:
      - "10.0.0.0/8"
    helpers: [sip, ftp]
`
	if y := string(c.EncodeYAML()); !strings.Contains(y, want) {
		t.Errorf("YAML lacks\n%s in\n%s", want, y)
	}
	j, err := c.Marshal("t.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"new_per_client_per_second": 10`, `"tcp_strict": true`, `"198.51.100.7/32"`, `"deny": [`, `"helpers": [`} {
		if !strings.Contains(string(j), want) {
			t.Errorf("JSON lacks %s:\n%s", want, j)
		}
	}
	plain := mustParse(t, "t.yaml", admissionFarm(""))
	for _, name := range []string{"t.yaml", "t.json"} {
		data, _ := plain.Marshal(name)
		for _, key := range []string{"limits", "tcp_strict", "allow", "deny", "helpers"} {
			if strings.Contains(string(data), key) {
				t.Errorf("%s of a farm without admission options has %s:\n%s", name, key, data)
			}
		}
	}
}

// Every problem with the admission options is reported with its line,
// the parser's and lb's alike, once, in the one wording.
func TestAdmissionOptionProblems(t *testing.T) {
	for _, tc := range []struct {
		name, lines string
		want        []string
	}{
		{"rate out of range", "limits: {new_per_second: -1}",
			[]string{`t.yaml:5: farms[web].limits.new_per_second: -1 is outside 0-1000000 (0: no limit)`}},
		{"every number out of range", "limits:\n  new_per_second: 1000001\n  burst: -5\n  new_per_client_per_second: -1\n  established_per_client: 2000000",
			[]string{
				`t.yaml:6: farms[web].limits.new_per_second: 1000001 is outside 0-1000000 (0: no limit)`,
				`t.yaml:7: farms[web].limits.burst: -5 is outside 0-1000000 (0: no limit)`,
				`t.yaml:8: farms[web].limits.new_per_client_per_second: -1 is outside 0-1000000 (0: no limit)`,
				`t.yaml:9: farms[web].limits.established_per_client: 2000000 is outside 0-1000000 (0: no limit)`,
			}},
		{"burst alone", "limits:\n  established_per_client: 5\n  burst: 10",
			[]string{`t.yaml:7: farms[web].limits.burst: applies to new_per_second and new_per_client_per_second, and neither is set`}},
		{"rate not a number", "limits: {new_per_second: many, burst: 10}",
			[]string{`t.yaml:5: farms[web].limits.new_per_second: "many" is not a whole number`}},
		{"client rate not a number", "limits:\n  new_per_client_per_second: 1.5\n  burst: 10",
			[]string{`t.yaml:6: farms[web].limits.new_per_client_per_second: "1.5" is not a whole number`}},
		{"bad action", "limits: {new_per_second: 10, action: bounce}",
			[]string{`t.yaml:5: farms[web].limits.action: unknown limit action "bounce" (want reject, drop)`}},
		{"unknown limit", "limits:\n  new_per_second: 10\n  rst_per_second: 10",
			[]string{`t.yaml:7: farms[web].limits.rst_per_second: unknown field "rst_per_second" (want one of action, burst, established_per_client, new_per_client_per_second, new_per_second)`}},
		{"duplicate limit", "limits:\n  burst: 10\n  new_per_second: 10\n  burst: 20",
			[]string{`t.yaml:8: farms[web].limits.burst: duplicate field (also on line 6)`}},
		{"limits not a mapping", "limits: 100",
			[]string{`t.yaml:5: farms[web].limits: want a mapping of fields, got "100"`}},
		{"tcp_strict not a boolean", "tcp_strict: yes",
			[]string{`t.yaml:5: farms[web].tcp_strict: "yes" is not true or false`}},
		{"tcp_strict on protocol all", "address: 198.51.100.250\nprotocol: all\ntcp_strict: true",
			[]string{`t.yaml:5: farms[web].tcp_strict: applies to farms with ports, not to protocol all`}},
		{"bad prefix", "allow: [192.0.2.0/33]",
			[]string{`t.yaml:5: farms[web].allow[0]: "192.0.2.0/33" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`}},
		{"a zone is not an address", "address: 2001:db8::250\nports: [80]\ndeny: [\"fe80::1%eth0\"]",
			[]string{`t.yaml:5: farms[web].deny[0]: "fe80::1%eth0" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`}},
		{"bad prefix keeps the next one's line", "deny:\n  - 192.0.2.0/24\n  - nonsense\n  - 2001:db8::/32",
			[]string{
				`t.yaml:7: farms[web].deny[1]: "nonsense" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`,
				`t.yaml:8: farms[web].deny[2]: 2001:db8::/32 is not of the same family as address 198.51.100.250`,
			}},
		{"prefix not a value", "allow: [{net: 192.0.2.0/24}]",
			[]string{`t.yaml:5: farms[web].allow[0]: want a single value, got a mapping`}},
		{"empty prefix", "allow: [192.0.2.0/24, \"\"]",
			[]string{`t.yaml:5: farms[web].allow[1]: "" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`}},
		{"prefix of the other family", "address: 2001:db8::250\nports: [80]\nallow:\n  - 2001:db8:c::/48\n  - 192.0.2.0/24",
			[]string{`t.yaml:7: farms[web].allow[1]: 192.0.2.0/24 is not of the same family as address 2001:db8::250`}},
		{"bad helper", "helpers: [ftp, http]",
			[]string{`t.yaml:5: farms[web].helpers[1]: unknown helper "http" (want ftp, tftp, sip)`}},
		{"helper twice", "helpers:\n  - ftp\n  - sip\n  - ftp",
			[]string{`t.yaml:8: farms[web].helpers[2]: ftp is listed twice`}},
		{"helper of another protocol", "helpers: [tftp]",
			[]string{`t.yaml:5: farms[web].helpers[0]: the tftp helper follows no tcp connection`}},
		{"helper not a value", "helpers: [[ftp]]",
			[]string{`t.yaml:5: farms[web].helpers[0]: want a single value, got a list`}},
		{"bad protocol with its helpers", "address: 198.51.100.250\nports: [69]\nprotocol: udpp\nhelpers: [tftp]",
			[]string{`t.yaml:5: farms[web].protocol: unknown protocol "udpp" (want tcp, udp, tcp+udp, sctp, all)`}},
		{"all at once", "limits: {new_per_second: -1, action: block}\ntcp_strict: maybe\nallow: [192.0.2.0/24, 192.0.2.300]\ndeny: [\"2001:db8::/32\"]\nhelpers: [ftp, ftp]",
			[]string{
				`t.yaml:5: farms[web].limits.action: unknown limit action "block" (want reject, drop)`,
				`t.yaml:5: farms[web].limits.new_per_second: -1 is outside 0-1000000 (0: no limit)`,
				`t.yaml:6: farms[web].tcp_strict: "maybe" is not true or false`,
				`t.yaml:7: farms[web].allow[1]: "192.0.2.300" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`,
				`t.yaml:8: farms[web].deny[0]: 2001:db8::/32 is not of the same family as address 198.51.100.250`,
				`t.yaml:9: farms[web].helpers[1]: ftp is listed twice`,
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAndValidate("t.yaml", []byte(admissionFarm(tc.lines)))
			if diff := cmp.Diff(tc.want, problemStrings(t, err)); diff != "" {
				t.Errorf("problems mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// prefixList returns n distinct IPv4 /32 prefixes.
func prefixList(n int) []netip.Prefix {
	out := make([]netip.Prefix, n)
	for i := range out {
		out[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32)
	}
	return out
}

// bigList returns a file of one farm denying n prefixes, written as the
// writer writes it.
func bigList(tb testing.TB, n int) []byte {
	tb.Helper()
	c := mustParse(tb, "t.yaml", admissionFarm(""))
	c.Farms[0].Deny = prefixList(n)
	return c.EncodeYAML()
}

// A list of the most prefixes lb takes parses, validates and is written
// back; one more is refused with lb's wording, at the list's line, and
// what is beyond the limit is not read.
func TestLargePrefixLists(t *testing.T) {
	data := bigList(t, lb.MaxPrefixes)
	c, err := ParseAndValidate("big.yaml", data)
	if err != nil {
		t.Fatalf("%d prefixes refused: %v", lb.MaxPrefixes, err)
	}
	if got := c.Farms[0].Deny; len(got) != lb.MaxPrefixes || got[lb.MaxPrefixes-1] != prefixList(lb.MaxPrefixes)[lb.MaxPrefixes-1] {
		t.Fatalf("read %d prefixes, want %d", len(got), lb.MaxPrefixes)
	}
	if string(c.EncodeYAML()) != string(data) {
		t.Errorf("the list is not written back as it was read")
	}
	for _, name := range []string{"big.json", "farms.d/web.json"} {
		var back Farm
		if name == "big.json" {
			out, _ := c.Marshal(name)
			bc, err := ParseAndValidate(name, out)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			back = bc.Farms[0]
		} else if back, err = ParseFarmFile(name, c.Farms[0].MarshalFarmFile(name)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !back.Equal(&c.Farms[0]) {
			t.Errorf("%s: the list does not read back the same", name)
		}
	}
	c.Farms[0].Deny = append(c.Farms[0].Deny, netip.MustParsePrefix("192.0.2.0/24"))
	_, err = ParseAndValidate("big.yaml", c.EncodeYAML())
	want := []string{fmt.Sprintf("big.yaml:9: farms[web].deny: %d prefixes, more than %d", lb.MaxPrefixes+1, lb.MaxPrefixes)}
	if diff := cmp.Diff(want, problemStrings(t, err)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
}

// Parsing, validating and writing a list costs in proportion to its
// length: four times the prefixes take well under sixteen times as long
// (the best of three runs, against a busy machine).
func TestPrefixListCostIsLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	cost := func(n int) time.Duration {
		data := bigList(t, n)
		best := time.Duration(1 << 62)
		for range 3 {
			start := time.Now()
			c, err := ParseAndValidate("big.yaml", data)
			if err != nil {
				t.Fatal(err)
			}
			c.EncodeYAML()
			c.Farms[0].Fragment("big.json")
			best = min(best, time.Since(start))
		}
		return best
	}
	small, large := cost(10000), cost(40000)
	t.Logf("10,000 prefixes: %s; 40,000: %s", small, large)
	if large > 10*small {
		t.Errorf("40,000 prefixes took %s, 10,000 %s: more than linear", large, small)
	}
}

// go test -run '^$' -bench Prefix ./agent/config/
func BenchmarkParsePrefixList10k(b *testing.B) {
	data := bigList(b, 10000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := ParseAndValidate("big.yaml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEmitPrefixList10k(b *testing.B) {
	c := mustParse(b, "t.yaml", admissionFarm(""))
	c.Farms[0].Deny = prefixList(10000)
	for b.Loop() {
		c.Farms[0].Fragment("big.yaml")
	}
}
