package config

import (
	"errors"
	"testing"

	"github.com/l4nft/l4nft/lb"
)

// FuzzParse feeds the file parser anything: it must not panic, must
// return either a valid configuration or problems that match
// lb.ErrInvalid, and must stay bounded (the alias bomb is in the seed
// corpus, testdata/fuzz/FuzzParse).
func FuzzParse(f *testing.F) {
	f.Add([]byte("farms: []\n"))
	f.Add([]byte("farms:\n  - {name: web, address: 198.51.100.250, ports: [\"80\"], backends: [{name: a, address: 203.0.113.10, weight: 2}]}\n"))
	f.Add([]byte(`{"farms": [{"name": "web", "weight": 5, "weight": 7}]}`))
	f.Add(aliasBomb(18 << 10))
	f.Add([]byte("farms:\n  - name: web\n    address: 198.51.100.250\n    ports: [\"21\"]\n" +
		"    limits: {new_per_second: 100, burst: 10, new_per_client_per_second: 5, established_per_client: 20, action: drop}\n" +
		"    tcp_strict: true\n    allow: [192.0.2.0/24, 203.0.113.7]\n    deny:\n      - 192.0.2.128/25\n    helpers: [ftp]\n" +
		"    backends: [{name: a, address: 203.0.113.10}]\n"))
	f.Add([]byte(`{"farms": [{"name": "web", "address": "2001:db8::1", "allow": "::/0", "deny": ["10.0.0.0/8", "x"], "helpers": ["sip", "sip"], "limits": {"burst": 5}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseAndValidate("fuzz.yaml", data)
		if err != nil {
			if c != nil {
				t.Fatalf("a configuration returned with error %v", err)
			}
			if !errors.Is(err, lb.ErrInvalid) {
				t.Fatalf("error %v does not match lb.ErrInvalid", err)
			}
			return
		}
		if err := lb.Validate(c.State(), c.LBOptions()); err != nil {
			t.Fatalf("accepted a configuration lb refuses: %v", err)
		}
	})
}
