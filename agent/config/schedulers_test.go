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

// schedulerFarm returns a file with one farm of two backends whose
// options are lines, written from line 5 on.
func schedulerFarm(lines string) string {
	var b strings.Builder
	b.WriteString("farms:\n  - name: web\n    address: 198.51.100.250\n    ports: [80]\n")
	for l := range strings.SplitSeq(lines, "\n") {
		if l != "" {
			b.WriteString("    " + l + "\n")
		}
	}
	b.WriteString("    backends:\n      - {name: app0, address: 203.0.113.10}\n      - {name: app1, address: 203.0.113.11}\n")
	return b.String()
}

// The scheduler's options: scheduler, hash_fields, slots and persistence
// are read into the lb.Farm as written.
func TestParseSchedulerOptions(t *testing.T) {
	min := func(m int) lb.Duration { return lb.Duration(time.Duration(m) * time.Minute) }
	for _, tc := range []struct {
		name, lines string
		want        lb.Farm // Scheduler, HashFields, Slots, Persistence
	}{
		{"defaults", "", lb.Farm{}},
		{"roundrobin", "scheduler: roundrobin", lb.Farm{Scheduler: lb.RoundRobin}},
		{"symhash", "scheduler: symhash", lb.Farm{Scheduler: lb.SymHash}},
		{"hash fields", "scheduler: hash\nhash_fields: [src_ip, dst_port]",
			lb.Farm{Scheduler: lb.Hash, HashFields: []lb.HashField{lb.SrcIP, lb.DstPort}}},
		{"one hash field, not a list", "scheduler: hash\nhash_fields: src_port",
			lb.Farm{Scheduler: lb.Hash, HashFields: []lb.HashField{lb.SrcPort}}},
		{"hash fields, block list", "scheduler: consistent\nhash_fields:\n  - dst_ip\n  - src_ip",
			lb.Farm{Scheduler: lb.Consistent, HashFields: []lb.HashField{lb.DstIP, lb.SrcIP}}},
		{"empty hash fields are the default", "scheduler: hash\nhash_fields: []", lb.Farm{Scheduler: lb.Hash}},
		{"consistent with slots", "scheduler: consistent\nhash_fields: [src_ip]\nslots: 1009",
			lb.Farm{Scheduler: lb.Consistent, HashFields: []lb.HashField{lb.SrcIP}, Slots: 1009}},
		{"slots 0 is the default", "scheduler: consistent\nslots: 0", lb.Farm{Scheduler: lb.Consistent}},
		{"persistence", "persistence: {by: src_ip_port, ttl: 90s}",
			lb.Farm{Persistence: &lb.Persistence{By: lb.PersistSrcIPPort, TTL: lb.Duration(90 * time.Second)}}},
		{"persistence by defaults to src_ip", "scheduler: roundrobin\npersistence:\n  ttl: 5m",
			lb.Farm{Scheduler: lb.RoundRobin, Persistence: &lb.Persistence{By: lb.PersistSrcIP, TTL: min(5)}}},
		{"persistence with consistent", "scheduler: consistent\npersistence: {by: dst_ip, ttl: 24h}",
			lb.Farm{Scheduler: lb.Consistent, Persistence: &lb.Persistence{By: lb.PersistDstIP, TTL: min(24 * 60)}}},
		{"null persistence is none", "persistence: null", lb.Farm{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustParse(t, "t.yaml", schedulerFarm(tc.lines))
			f := c.Farms[0].LB()
			got := lb.Farm{Scheduler: f.Scheduler, HashFields: f.HashFields, Slots: f.Slots, Persistence: f.Persistence}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("farm mismatch (-want +got):\n%s", diff)
			}
			// What is written reads back the same, in YAML and JSON.
			for _, name := range []string{"out.yaml", "out.json"} {
				data, err := c.Marshal(name)
				if err != nil {
					t.Fatalf("failed to marshal: %v", err)
				}
				back := mustParse(t, name, string(data))
				if !back.Farms[0].Equal(&c.Farms[0]) {
					t.Errorf("%s round trip: %+v, want %+v\n%s", name, back.Farms[0].Farm, c.Farms[0].Farm, data)
				}
			}
			m, err := yaml.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if back := mustParse(t, "marshalled.yaml", string(m)); !back.Farms[0].Equal(&c.Farms[0]) {
				t.Errorf("yaml.Marshal round trip: %+v, want %+v\n%s", back.Farms[0].Farm, c.Farms[0].Farm, m)
			}
			if p := f.Persistence; p != nil {
				want := fmt.Sprintf("    persistence:\n      by: %s\n      ttl: %s\n", p.By, p.TTL)
				if y := string(c.EncodeYAML()); !strings.Contains(y, want) {
					t.Errorf("YAML lacks\n%s in\n%s", want, y)
				}
			}
		})
	}
}

// Every problem with the scheduler's options is reported with its line,
// the parser's and lb's alike, once.
func TestSchedulerOptionProblems(t *testing.T) {
	for _, tc := range []struct {
		name, lines string
		want        []string
	}{
		{"bad scheduler", "scheduler: leastconn",
			[]string{`t.yaml:5: farms[web].scheduler: unknown scheduler "leastconn" (want weight, roundrobin, hash, symhash, consistent)`}},
		{"bad scheduler with its options", "scheduler: consitent\nhash_fields: [src_ip]\nslots: 1009",
			[]string{`t.yaml:5: farms[web].scheduler: unknown scheduler "consitent" (want weight, roundrobin, hash, symhash, consistent)`}},
		{"bad hash field", "scheduler: hash\nhash_fields: [src_ip, dst_mac]",
			[]string{`t.yaml:6: farms[web].hash_fields[1]: unknown hash field "dst_mac" (want src_ip, src_port, dst_ip, dst_port)`}},
		{"bad hash field keeps the next one's line", "scheduler: hash\nhash_fields:\n  - proto\n  - src_ip\n  - src_ip",
			[]string{
				`t.yaml:7: farms[web].hash_fields[0]: unknown hash field "proto" (want src_ip, src_port, dst_ip, dst_port)`,
				`t.yaml:9: farms[web].hash_fields[2]: src_ip is listed twice`,
			}},
		{"hash field not a value", "scheduler: hash\nhash_fields: [{src: ip}]",
			[]string{`t.yaml:6: farms[web].hash_fields[0]: want a single value, got a mapping`}},
		{"hash fields with weight", "hash_fields: [src_ip]",
			[]string{`t.yaml:5: farms[web].hash_fields: apply to the hash and consistent schedulers only, not weight`}},
		{"slots with hash", "scheduler: hash\nslots: 1009",
			[]string{`t.yaml:6: farms[web].slots: applies to the consistent scheduler only, not hash`}},
		{"too few slots", "scheduler: consistent\nslots: 150",
			[]string{`t.yaml:6: farms[web].slots: 150 is fewer than 100 per backend (2 backends need 200)`}},
		{"slots out of range", "scheduler: consistent\nslots: -1",
			[]string{`t.yaml:6: farms[web].slots: -1 is outside 1-1048576 (0 means 100 per backend)`}},
		{"slots not a number", "scheduler: consistent\nslots: many",
			[]string{`t.yaml:6: farms[web].slots: "many" is not a whole number`}},
		{"bad persistence key", "persistence: {by: cookie, ttl: 5m}",
			[]string{`t.yaml:5: farms[web].persistence.by: unknown persistence key "cookie" (want src_ip, src_ip_port, dst_ip)`}},
		{"unknown persistence field", "persistence:\n  by: src_ip\n  ttl: 5m\n  timeout: 5m",
			[]string{`t.yaml:8: farms[web].persistence.timeout: unknown field "timeout" (want one of by, ttl)`}},
		{"bad ttl", "persistence:\n  by: src_ip\n  ttl: 5 minutes",
			[]string{`t.yaml:7: farms[web].persistence.ttl: duration "5 minutes": want a number and a unit, such as 90s or 5m`}},
		{"ttl too long", "persistence: {ttl: 48h}",
			[]string{`t.yaml:5: farms[web].persistence.ttl: 48h0m0s is outside 1s-24h0m0s`}},
		{"ttl too short", "persistence:\n  ttl: 500ms",
			[]string{`t.yaml:6: farms[web].persistence.ttl: 500ms is outside 1s-24h0m0s`}},
		{"ttl missing", "persistence:\n  by: dst_ip",
			[]string{`t.yaml:6: farms[web].persistence.ttl: missing: want how long a client's entry lives, such as 5m (1s-24h0m0s)`}},
		{"persistence not a mapping", "persistence: 5m",
			[]string{`t.yaml:5: farms[web].persistence: want a mapping of fields, got "5m"`}},
		{"all at once", "scheduler: hash\nhash_fields: [src_ip, src_ip]\nslots: 1009\npersistence: {by: dst_port, ttl: 0s}",
			[]string{
				`t.yaml:6: farms[web].hash_fields[1]: src_ip is listed twice`,
				`t.yaml:7: farms[web].slots: applies to the consistent scheduler only, not hash`,
				`t.yaml:8: farms[web].persistence.by: unknown persistence key "dst_port" (want src_ip, src_ip_port, dst_ip)`,
				`t.yaml:8: farms[web].persistence.ttl: 0s is outside 1s-24h0m0s`,
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAndValidate("t.yaml", []byte(schedulerFarm(tc.lines)))
			if diff := cmp.Diff(tc.want, problemStrings(t, err)); diff != "" {
				t.Errorf("problems mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
