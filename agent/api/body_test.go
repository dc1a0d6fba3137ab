package api

import (
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
)

// mustFarm starts a server holding webFarm.
func mustFarm(tb testing.TB) (*httptest.Server, *fakeService) {
	tb.Helper()
	srv, svc := mustServer(tb, "")
	if code, body := do(tb, srv, "POST", "/v1/farms", "", webFarm); code != 201 {
		tb.Fatalf("failed to create the farm: %d %s", code, body)
	}
	return srv, svc
}

func problemsOf(tb testing.TB, body string) []string {
	tb.Helper()
	var eb struct {
		Problems []struct {
			File    string `json:"file"`
			Line    int    `json:"line"`
			Path    string `json:"path"`
			Message string `json:"message"`
		} `json:"problems"`
	}
	if err := json.Unmarshal([]byte(body), &eb); err != nil {
		tb.Fatalf("failed to decode %s: %v", body, err)
	}
	var out []string
	for _, p := range eb.Problems {
		out = append(out, p.Path+": "+p.Message)
	}
	return out
}

// A backend change is parsed with the file's rules: duplicate keys and
// keys in another case are problems, not silently taken, and the weight's
// range is worded as in a file. Nothing is changed.
func TestPatchBodyIsStrict(t *testing.T) {
	srv, svc := mustFarm(t)
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{"duplicate", `{"weight":5,"weight":7}`, []string{"weight: duplicate field (also on line 1)"}},
		{"case", `{"Weight":8}`, []string{`Weight: unknown field "Weight" (want one of state, weight)`}},
		{"range", `{"weight":20000}`, []string{"weight: 20000 is outside 1-10000"}},
		{"zero", `{"weight":0}`, []string{"weight: 0 is not a weight (want 1-10000); to stop new connections set state drain"}},
		{"all at once", `{"weight":0,"state":"sleeping","colour":1}`, []string{
			`colour: unknown field "colour" (want one of state, weight)`,
			`state: unknown state "sleeping" (want up, drain, down)`,
			"weight: 0 is not a weight (want 1-10000); to stop new connections set state drain",
		}},
		{"nothing", `{}`, []string{`: nothing to change: want "weight" and/or "state"`}},
	} {
		code, body := do(t, srv, "PATCH", "/v1/farms/web/backends/app0", "", tc.body)
		if code != 400 {
			t.Errorf("%s: %d %s, want 400", tc.name, code, body)
			continue
		}
		got := problemsOf(t, body)
		for i, w := range tc.want {
			if strings.HasPrefix(w, ": ") {
				tc.want[i] = "farms[web].backends[app0]" + w
			} else {
				tc.want[i] = "farms[web].backends[app0]." + w
			}
		}
		if tc.name == "all at once" {
			slices.Sort(got)
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: problems mismatch (-want +got):\n%s", tc.name, diff)
		}
	}
	if f, _ := svc.Farm("web"); f.Backends[0].Weight != 1 || f.Backends[0].State.String() != "up" {
		t.Errorf("a refused change changed the backend: %+v", f.Backends[0])
	}
}

// A farm body with parse and validation problems reports all of them in
// one answer, with the file's wording.
func TestFarmBodyReportsEveryProblem(t *testing.T) {
	srv, _ := mustServer(t, "")
	body := `{"name": "web", "address": "198.51.100.250", "ports": ["80"], "colour": 1,
  "backends": [{"name": "app0", "address": "203.0.113.10", "weight": 20000}]}`
	code, out := do(t, srv, "PUT", "/v1/farms/web", "", body)
	if code != 400 {
		t.Fatalf("PUT: %d %s, want 400", code, out)
	}
	want := []string{
		`farms[web].colour: unknown field "colour" (want one of address, allow, backends, deny, hash_fields, health, helpers, limits, mode, name, persistence, ports, protocol, scheduler, slots, source, tcp_strict)`,
		"farms[web].backends[app0].weight: 20000 is outside 1-10000",
	}
	if diff := cmp.Diff(want, problemsOf(t, out)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
}

// ?dry_run=true answers with the plan and changes nothing.
func TestDryRun(t *testing.T) {
	srv, svc := mustFarm(t)
	before, _ := svc.Farm("web")
	for _, tc := range []struct {
		method, path, body string
		want               PlanBody
	}{
		{"PATCH", "/v1/farms/web/backends/app0?dry_run=true", `{"weight": 3}`, PlanBody{Changed: []string{"web"}}},
		{"PATCH", "/v1/farms/web/backends/app0?dry_run=1", `{"weight": 1}`, PlanBody{Empty: true, Changed: []string{}}},
		{"PUT", "/v1/farms/web?dry_run=true", strings.Replace(webFarm, `"weight": 1`, `"weight": 2`, 1), PlanBody{Changed: []string{"web"}}},
		{"POST", "/v1/farms?dry_run=true", strings.Replace(webFarm, `"name": "web", "address": "198.51.100.250"`, `"name": "db", "address": "198.51.100.251"`, 1), PlanBody{Added: []string{"db"}}},
		{"DELETE", "/v1/farms/web?dry_run=true", "", PlanBody{Removed: []string{"web"}}},
	} {
		code, body := do(t, srv, tc.method, tc.path, "", tc.body)
		if code != 200 {
			t.Errorf("%s %s: %d %s, want 200", tc.method, tc.path, code, body)
			continue
		}
		var got PlanBody
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("failed to decode %s: %v", body, err)
		}
		if !got.DryRun || got.Empty != tc.want.Empty || !strings.HasPrefix(got.NFT, "# ") {
			t.Errorf("%s %s: plan %+v", tc.method, tc.path, got)
		}
		for _, l := range []struct{ got, want []string }{{got.Added, tc.want.Added}, {got.Changed, tc.want.Changed}, {got.Removed, tc.want.Removed}} {
			if len(l.want) > 0 && !cmp.Equal(l.got, l.want) {
				t.Errorf("%s %s: plan %+v, want %+v", tc.method, tc.path, got, tc.want)
			}
		}
	}
	if after, _ := svc.Farm("web"); !after.Equal(&before) || len(svc.Farms()) != 1 {
		t.Errorf("a dry run changed the farms: %+v", svc.Farms())
	}
	for _, tc := range []struct{ method, path, body string }{
		{"PATCH", "/v1/farms/web/backends/app0?dry_run=maybe", `{"weight": 3}`},
		{"PATCH", "/v1/farms/web/backends/app0?dry_run=true", `{"weight": 0}`},
		{"DELETE", "/v1/farms/nope?dry_run=true", ""},
	} {
		if code, body := do(t, srv, tc.method, tc.path, "", tc.body); code < 400 {
			t.Errorf("%s %s: %d %s, want a refusal", tc.method, tc.path, code, body)
		}
	}
}

// Farms beyond Limits.MaxFarms are refused; replacing one is not.
func TestMaxFarms(t *testing.T) {
	svc := &fakeService{}
	srv := httptest.NewServer(NewHandler(Options{Service: svc, Limits: config.Limits{MaxFarms: 1, MaxBackends: 1}}))
	t.Cleanup(srv.Close)
	if code, body := do(t, srv, "POST", "/v1/farms", "", webFarm); code != 201 {
		t.Fatalf("first farm: %d %s", code, body)
	}
	other := strings.Replace(webFarm, `"name": "web", "address": "198.51.100.250"`, `"name": "db", "address": "198.51.100.251"`, 1)
	if code, body := do(t, srv, "PUT", "/v1/farms/db", "", other); code != 409 || !strings.Contains(body, "limits.max_farms") {
		t.Errorf("second farm: %d %s, want 409 naming limits.max_farms", code, body)
	}
	if code, body := do(t, srv, "PUT", "/v1/farms/web", "", webFarm); code != 200 {
		t.Errorf("replacing the farm: %d %s, want 200", code, body)
	}
	two := strings.Replace(webFarm, `]}`, `, {"name": "app1", "address": "203.0.113.11"}]}`, 1)
	if code, body := do(t, srv, "PUT", "/v1/farms/web", "", two); code != 400 || !strings.Contains(body, "limits.max_backends") {
		t.Errorf("two backends: %d %s, want 400 naming limits.max_backends", code, body)
	}
}

// A farm's scheduler options and persistence go in with a PUT, come back
// with a GET, the client's decoding included, survive a PATCH of a
// backend, and are refused with the file's wording when wrong.
func TestSchedulerOptionsRoundTrip(t *testing.T) {
	srv, svc := mustServer(t, "")
	body := `{"name": "web", "address": "198.51.100.250", "ports": ["80"],
  "scheduler": "consistent", "hash_fields": ["src_port", "src_ip"], "slots": 1009,
  "persistence": {"by": "src_ip_port", "ttl": "5m"},
  "backends": [{"name": "app0", "address": "203.0.113.10"}, {"name": "app1", "address": "203.0.113.11"}]}`
	if code, out := do(t, srv, "PUT", "/v1/farms/web", "", body); code != 201 {
		t.Fatalf("PUT: %d %s, want 201", code, out)
	}
	want := lb.Farm{Scheduler: lb.Consistent, HashFields: []lb.HashField{lb.SrcPort, lb.SrcIP}, Slots: 1009,
		Persistence: &lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(5 * time.Minute)}}
	addrs := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	options := func(f config.Farm) lb.Farm {
		return lb.Farm{Scheduler: f.Scheduler, HashFields: f.HashFields, Slots: f.Slots, Persistence: f.Persistence}
	}
	check := func(step string) {
		t.Helper()
		code, out := do(t, srv, "GET", "/v1/farms/web", "", "")
		var f config.Farm
		if err := json.Unmarshal([]byte(out), &f); code != 200 || err != nil {
			t.Fatalf("%s: GET: %d %s (%v)", step, code, out, err)
		}
		if diff := cmp.Diff(want, options(f), addrs); diff != "" {
			t.Errorf("%s: farm read back (-want +got):\n%s", step, diff)
		}
		for _, key := range []string{`"scheduler": "consistent"`, `"slots": 1009`, `"ttl": "5m0s"`, `"by": "src_ip_port"`} {
			if !strings.Contains(out, key) {
				t.Errorf("%s: GET answer lacks %s: %s", step, key, out)
			}
		}
	}
	check("PUT")
	if code, out := do(t, srv, "PATCH", "/v1/farms/web/backends/app0", "", `{"weight": 3}`); code != 200 {
		t.Fatalf("PATCH: %d %s", code, out)
	}
	check("PATCH")
	// The client sends back what it read: the same farm.
	c := NewClient(srv.URL, "", nil)
	f, err := c.Farm(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	f.Persistence.TTL = lb.Duration(90 * time.Second)
	if _, err := c.PutFarm(t.Context(), f); err != nil {
		t.Fatalf("client PUT: %v", err)
	}
	want.Persistence.TTL = lb.Duration(90 * time.Second)
	if got, _ := svc.Farm("web"); !cmp.Equal(want, options(got), addrs) || got.Backends[0].Weight != 3 {
		t.Errorf("after the client's PUT: %+v", got)
	}
	// Refused, every problem at once, and nothing changed.
	bad := strings.NewReplacer(`"consistent"`, `"leastconn"`, `"src_port", "src_ip"`, `"src_port", "dst_mac"`,
		`"src_ip_port", "ttl": "5m"`, `"cookie", "ttl": "5 minutes"`).Replace(body)
	code, out := do(t, srv, "PUT", "/v1/farms/web", "", bad)
	if code != 400 {
		t.Fatalf("bad PUT: %d %s, want 400", code, out)
	}
	wantProblems := []string{
		`farms[web].scheduler: unknown scheduler "leastconn" (want weight, roundrobin, hash, symhash, consistent)`,
		`farms[web].hash_fields[1]: unknown hash field "dst_mac" (want src_ip, src_port, dst_ip, dst_port)`,
		`farms[web].persistence.by: unknown persistence key "cookie" (want src_ip, src_ip_port, dst_ip)`,
		`farms[web].persistence.ttl: duration "5 minutes": want a number and a unit, such as 90s or 5m`,
	}
	if diff := cmp.Diff(wantProblems, problemsOf(t, out)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
	if got, _ := svc.Farm("web"); !cmp.Equal(want, options(got), addrs) {
		t.Errorf("the refused PUT changed the farm: %+v", got)
	}
}

// A farm's limits, tcp_strict, allow and deny lists and helpers go in
// with a PUT, come back with a GET, the client's decoding included,
// survive a PATCH of a backend, change by a PUT of the farm with its new
// deny list (the API has no PATCH of a farm), and are refused with the
// file's wording when wrong.
func TestAdmissionOptionsRoundTrip(t *testing.T) {
	srv, svc := mustServer(t, "")
	body := `{"name": "web", "address": "198.51.100.250", "ports": ["21"],
  "limits": {"new_per_second": 1000, "burst": 50, "new_per_client_per_second": 10, "established_per_client": 20, "action": "drop"},
  "tcp_strict": true, "allow": ["192.0.2.0/24", "203.0.113.7"], "deny": ["192.0.2.128/25"], "helpers": ["ftp"],
  "backends": [{"name": "app0", "address": "203.0.113.10"}, {"name": "app1", "address": "203.0.113.11"}]}`
	if code, out := do(t, srv, "PUT", "/v1/farms/web", "", body); code != 201 {
		t.Fatalf("PUT: %d %s, want 201", code, out)
	}
	prefixes := func(s ...string) []netip.Prefix {
		out := make([]netip.Prefix, len(s))
		for i, p := range s {
			out[i] = netip.MustParsePrefix(p)
		}
		return out
	}
	want := lb.Farm{Limits: &lb.Limits{NewPerSecond: 1000, Burst: 50, NewPerClientPerSecond: 10, EstablishedPerClient: 20, Action: lb.Drop},
		TCPStrict: true, Allow: prefixes("192.0.2.0/24", "203.0.113.7/32"), Deny: prefixes("192.0.2.128/25"), Helpers: []lb.Helper{lb.FTP}}
	addrs := cmp.Options{cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })}
	options := func(f config.Farm) lb.Farm {
		return lb.Farm{Limits: f.Limits, TCPStrict: f.TCPStrict, Allow: f.Allow, Deny: f.Deny, Helpers: f.Helpers}
	}
	check := func(step string, keys ...string) {
		t.Helper()
		code, out := do(t, srv, "GET", "/v1/farms/web", "", "")
		var f config.Farm
		if err := json.Unmarshal([]byte(out), &f); code != 200 || err != nil {
			t.Fatalf("%s: GET: %d %s (%v)", step, code, out, err)
		}
		if diff := cmp.Diff(want, options(f), addrs); diff != "" {
			t.Errorf("%s: farm read back (-want +got):\n%s", step, diff)
		}
		for _, key := range append([]string{`"new_per_second": 1000`, `"action": "drop"`, `"tcp_strict": true`, `"helpers": [`}, keys...) {
			if !strings.Contains(out, key) {
				t.Errorf("%s: GET answer lacks %s: %s", step, key, out)
			}
		}
	}
	check("PUT", `"203.0.113.7/32"`, `"192.0.2.128/25"`)
	if code, out := do(t, srv, "PATCH", "/v1/farms/web/backends/app0", "", `{"weight": 3}`); code != 200 {
		t.Fatalf("PATCH: %d %s", code, out)
	}
	check("PATCH of a backend")
	// No PATCH of a farm: its deny list changes with a PUT of the farm.
	if code, out := do(t, srv, "PATCH", "/v1/farms/web", "", `{"deny": ["192.0.2.9"]}`); code != 405 {
		t.Errorf("PATCH of a farm: %d %s, want 405", code, out)
	}
	check("PATCH of a farm")
	c := NewClient(srv.URL, "", nil)
	f, err := c.Farm(t.Context(), "web")
	if err != nil {
		t.Fatal(err)
	}
	f.Deny = append(f.Deny, netip.MustParsePrefix("192.0.2.9/32"))
	if _, err := c.PutFarm(t.Context(), f); err != nil {
		t.Fatalf("client PUT: %v", err)
	}
	want.Deny = prefixes("192.0.2.128/25", "192.0.2.9/32")
	check("PUT of a longer deny list", `"192.0.2.9/32"`)
	if got, _ := svc.Farm("web"); !cmp.Equal(want, options(got), addrs) || got.Backends[0].Weight != 3 {
		t.Errorf("after the client's PUT: %+v", got)
	}
	// An empty deny list removes it; the rest stays.
	f.Deny = nil
	if _, err := c.PutFarm(t.Context(), f); err != nil {
		t.Fatalf("client PUT: %v", err)
	}
	want.Deny = nil
	check("PUT without a deny list")
	// Refused, every problem at once, and nothing changed.
	bad := strings.NewReplacer(`"new_per_second": 1000`, `"new_per_second": -1`, `"drop"`, `"bounce"`, `"tcp_strict": true`, `"tcp_strict": "on"`,
		`"203.0.113.7"`, `"203.0.113.0/33"`, `"192.0.2.128/25"`, `"2001:db8::/32"`, `["ftp"]`, `["ftp", "tftp"]`).Replace(body)
	code, out := do(t, srv, "PUT", "/v1/farms/web", "", bad)
	if code != 400 {
		t.Fatalf("bad PUT: %d %s, want 400", code, out)
	}
	wantProblems := []string{
		`farms[web].limits.action: unknown limit action "bounce" (want reject, drop)`,
		"farms[web].limits.new_per_second: -1 is outside 0-1000000 (0: no limit)",
		`farms[web].tcp_strict: "on" is not true or false`,
		`farms[web].allow[1]: "203.0.113.0/33" is not a prefix (such as 192.0.2.0/24 or 2001:db8::/32) or an address`,
		"farms[web].deny[0]: 2001:db8::/32 is not of the same family as address 198.51.100.250",
		"farms[web].helpers[1]: the tftp helper follows no tcp connection",
	}
	if diff := cmp.Diff(wantProblems, problemsOf(t, out)); diff != "" {
		t.Errorf("problems mismatch (-want +got):\n%s", diff)
	}
	if got, _ := svc.Farm("web"); !cmp.Equal(want, options(got), addrs) {
		t.Errorf("the refused PUT changed the farm: %+v", got)
	}
}
