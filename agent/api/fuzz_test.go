package api

import (
	"net/http"
	"testing"
)

// fuzzBody sends body with method to path of a server holding webFarm and
// checks that a refused request changed nothing and that nothing panics.
func fuzzBody(t *testing.T, method, path string, body []byte) {
	srv, svc := mustFarm(t)
	before := svc.Farms()
	code, out := do(t, srv, method, path, "", string(body))
	if code == http.StatusInternalServerError {
		t.Fatalf("%s %s: 500 %s", method, path, out)
	}
	if code >= 300 {
		after := svc.Farms()
		if len(after) != len(before) || !after[0].Equal(&before[0]) {
			t.Fatalf("%s %s refused (%d) but changed the farms: %+v", method, path, code, after)
		}
	}
}

// FuzzFarmBody: a farm body, as PUT; seeds in testdata/fuzz/FuzzFarmBody.
func FuzzFarmBody(f *testing.F) {
	f.Add([]byte(webFarm))
	f.Add([]byte(`{"name": "web", "name": "web"}`))
	f.Add([]byte(`{"Name": "web"}`))
	f.Add([]byte(`{"name": "web", "address": "198.51.100.250", "ports": ["80"], "scheduler": "consistent",
  "hash_fields": ["src_ip", "dst_port"], "slots": 1009, "persistence": {"by": "src_ip_port", "ttl": "5m"},
  "backends": [{"name": "app0", "address": "203.0.113.10", "weight": 1}]}`))
	f.Add([]byte(`{"name": "web", "scheduler": "hash", "hash_fields": "src_ip", "persistence": {"ttl": "90s", "ttl": "1h"}}`))
	f.Add([]byte(`{"name": "web", "address": "198.51.100.250", "ports": ["21"],
  "limits": {"new_per_second": 100, "burst": 10, "new_per_client_per_second": 5, "established_per_client": 20, "action": "drop"},
  "tcp_strict": true, "allow": ["192.0.2.0/24", "203.0.113.7"], "deny": ["192.0.2.128/25"], "helpers": ["ftp", "sip"],
  "backends": [{"name": "app0", "address": "203.0.113.10", "weight": 1}]}`))
	f.Add([]byte(`{"name": "web", "limits": {"burst": 5, "burst": 6}, "allow": "::/0", "deny": [["x"]], "helpers": "tftp", "tcp_strict": 1}`))
	f.Fuzz(func(t *testing.T, body []byte) { fuzzBody(t, "PUT", "/v1/farms/web", body) })
}

// FuzzBackendBody: a backend change, as PATCH; seeds in
// testdata/fuzz/FuzzBackendBody.
func FuzzBackendBody(f *testing.F) {
	f.Add([]byte(`{"weight": 3}`))
	f.Add([]byte(`{"weight":5,"weight":7}`))
	f.Add([]byte(`{"Weight":8}`))
	f.Add([]byte(`{"state": "drain", "weight": 0}`))
	f.Fuzz(func(t *testing.T, body []byte) { fuzzBody(t, "PATCH", "/v1/farms/web/backends/app0", body) })
}
