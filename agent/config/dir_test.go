package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/l4nft/l4nft/lb"
)

// mustDir writes files (relative path -> content) into a new directory.
func mustDir(tb testing.TB, files map[string]string) string {
	tb.Helper()
	dir := tb.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatalf("failed to create %s: %v", filepath.Dir(p), err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			tb.Fatalf("failed to write %s: %v", p, err)
		}
	}
	return dir
}

const webFarm = `address: 198.51.100.250
ports: ["443"]
backends:
  - {name: app0, address: 203.0.113.10, weight: 1}
  - {name: app1, address: 203.0.113.11, weight: 2}
`

func TestLoadDir(t *testing.T) {
	dir := mustDir(t, map[string]string{
		"l4nft.yaml":           "table: l4nft\napi: {socket: /tmp/l4nft.sock}\n",
		"farms.d/web.yaml":     "name: web\n" + webFarm,
		"farms.d/api.yml":      strings.Replace(webFarm, ".250", ".251", 1), // name from the file
		"farms.d/.web.swp":     "not: a farm",
		"farms.d/web.yaml~":    "an editor's backup",
		"farms.d/README":       "ignored",
		"farms.d/db.json":      `{"address": "198.51.100.252", "ports": [5432], "backends": []}`,
		"farms.d/old.yaml.bak": "ignored too",
	})
	c, err := Load(dir)
	if err != nil {
		t.Fatalf("failed to load %s: %v", dir, err)
	}
	var names []string
	for _, f := range c.Farms {
		names = append(names, f.Name)
	}
	if diff := cmp.Diff([]string{"api", "db", "web"}, names); diff != "" {
		t.Errorf("farms (-want +got):\n%s", diff)
	}
	if c.API.Socket != "/tmp/l4nft.sock" || c.TableName() != "l4nft" {
		t.Errorf("main file not read: %+v", c.API)
	}
	if got := c.Farms[2].SourceFile(); got != filepath.Join(dir, "farms.d", "web.yaml") {
		t.Errorf("web's source %q", got)
	}

	// Without a main file, everything takes its default.
	dir2 := mustDir(t, map[string]string{"farms.d/web.yaml": webFarm})
	if c, err := Load(dir2); err != nil || len(c.Farms) != 1 || c.TableName() != lb.DefaultTable {
		t.Errorf("directory without main file: %v, %+v", err, c)
	}
}

func TestLoadDirProblems(t *testing.T) {
	dir := mustDir(t, map[string]string{
		"l4nft.yaml":        "table: l4nft\nfarms: []\n",
		"farms.d/web.yaml":  "name: other\n" + strings.Replace(webFarm, ".250", ".251", 1),
		"farms.d/dup.yaml":  strings.Replace(webFarm, "ports: [\"443\"]", "ports: [\"443\"]\nports: [\"80\"]", 1),
		"farms.d/conf.yaml": strings.Replace(webFarm, ".250", ".252", 1), // same address and port as bad
		"farms.d/bad.yaml":  strings.Replace(strings.Replace(webFarm, "weight: 2", "weight: 0", 1), ".250", ".252", 1),
	})
	_, err := Load(dir)
	d := func(n string) string { return filepath.Join(dir, n) }
	want := []string{
		d("farms.d/bad.yaml") + `:5: farms[bad].backends[app1].weight: 0 is not a weight (want 1-10000); to stop new connections set state drain`,
		d("farms.d/conf.yaml") + `:2: farms[conf].ports: 198.51.100.252 tcp port 443 is already served by farm "bad" (farms[0]) port 443`,
		d("farms.d/dup.yaml") + `:3: farms[dup].ports: duplicate field (also on line 2)`,
		d("farms.d/web.yaml") + `:1: farms[web].name: "other" is not the name of the file: a farm file holds the farm it is named after`,
		d("l4nft.yaml") + `:2: farms: in a configuration directory each farm has its own file in farms.d/`,
	}
	got := problemStrings(t, err)
	if diff := cmp.Diff(sorted(want), sorted(got)); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// The YAML library must keep reporting lines and rejecting duplicate keys
// at every level, in YAML and JSON alike.
func TestYAMLEdgeCases(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"dup top", "farms: []\nfarms: []\n", "dup top.yaml:2: farms: duplicate field (also on line 1)"},
		{"dup farm field", "farms:\n  - name: web\n    address: 198.51.100.250\n    address: 198.51.100.251\n    ports: [80]\n    backends: []\n",
			"dup farm field.yaml:4: farms[web].address: duplicate field (also on line 3)"},
		{"dup backend field", "farms:\n  - name: web\n    address: 198.51.100.250\n    ports: [80]\n    backends:\n      - {name: a, address: 203.0.113.1, weight: 1, weight: 2}\n",
			"dup backend field.yaml:6: farms[web].backends[a].weight: duplicate field (also on line 6)"},
		{"dup json", "{\"farms\": [],\n \"farms\": []}", "dup json.json:2: farms: duplicate field (also on line 1)"},
		{"tab", "farms:\n\t- name: web\n", "tab.yaml:2: found character that cannot start any token"},
		{"anchor", "x: &a {name: web}\nfarms: [*a]\n", `anchor.yaml:1: x: unknown field "x"`},
		{"bad line", "farms:\n  - name: web\n    address: 198.51.100.250\n    ports: [80]\n    backends:\n      - {name: a, address: nope}\n",
			`bad line.yaml:6: farms[web].backends[a].address: "nope" is not an IP address`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext := ".yaml"
			if strings.HasPrefix(tc.text, "{") {
				ext = ".json"
			}
			_, err := ParseAndValidate(tc.name+ext, []byte(tc.text))
			got := problemStrings(t, err)
			if len(got) == 0 || !strings.HasPrefix(got[0], tc.want) {
				t.Errorf("got %q, want a first problem starting with %q", got, tc.want)
			}
		})
	}
}

// Everything written reads back the same, whatever the strings hold.
func TestEmitRoundTrip(t *testing.T) {
	c := mustParse(t, "l4nft.yaml", example+`options: {mark_mask: 0x00ff0000, local_connections: true}
api: {socket: "/tmp/a b#c.sock", listen: "127.0.0.1:9100", token_file: "yes"}
`)
	f := c.Farms[0].Clone()
	f.Name = "web2"
	f.Address = mustAddr("2001:db8::250")
	f.Source = mustAddr("2001:db8::250")
	f.Health = &Health{Type: "http", Path: "/a b?c=1&d=#x", Host: "null", Expect: "200", Interval: Duration(1500e6)}
	for i := range f.Backends {
		f.Backends[i].Address = mustAddr("2001:db8:b::1" + string(rune('0'+i)))
		f.Backends[i].Health = &Health{Host: "0x10", Path: "/~"}
	}
	f.Backends[0].Health = &Health{}
	f.Ports = []lb.PortRange{lb.Port(1), {First: 8000, Last: 8010}}
	f.Limits = &lb.Limits{NewPerClientPerSecond: 7, Burst: 9}
	f.TCPStrict = true
	f.Allow = []netip.Prefix{netip.MustParsePrefix("::/0"), netip.MustParsePrefix("2001:db8:c::1/128")}
	f.Deny = []netip.Prefix{netip.MustParsePrefix("fd00::/8")}
	f.Helpers = []lb.Helper{lb.SIP}
	c.Farms = append(c.Farms, f)
	for _, s := range []string{"", "true", "No", "1:2", "1e3", "0o17", "- x", "a: b", "a #b", "'", "\"", "\\", "é", "\x00", "2001-12-14", ".5", "@x", "*a", "&a", "!t", "%x", "`x", "a,b", "[x]", "{x}", "|", ">"} {
		if plain(s) {
			t.Errorf("%q is written plain", s)
		}
	}
	for _, name := range []string{"out.yaml", "out.json"} {
		b, err := c.Marshal(name)
		if err != nil {
			t.Fatalf("failed to marshal: %v", err)
		}
		back := mustParse(t, name, string(b))
		if diff := cmp.Diff(c, back, cmpConfig); diff != "" {
			t.Errorf("%s: round trip mismatch (-want +got):\n%s\n%s", name, diff, b)
		}
		for i := range c.Farms {
			file := "farms.d/" + c.Farms[i].Name + filepath.Ext(name)
			fb := c.Farms[i].MarshalFarmFile(file)
			got, err := ParseFarmFile(file, fb)
			if err != nil {
				t.Fatalf("failed to parse the farm file %s: %v\n%s", file, err, fb)
			}
			if !got.Equal(&c.Farms[i]) {
				t.Errorf("%s: farm file round trip: got %+v, want %+v", file, got, c.Farms[i])
			}
		}
		main := c.MarshalMain("l4nft" + filepath.Ext(name))
		m, err := ParseMain("l4nft"+filepath.Ext(name), main)
		if err != nil || m.API != c.API || m.Options != c.Options || m.Table != c.Table {
			t.Errorf("main file round trip: %v, %+v\n%s", err, m, main)
		}
	}
}

func TestWriteFileKeepsModeAndOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("requires root (chown)")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "web.yaml")
	if err := os.WriteFile(path, []byte("x\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 4242, 4343); err != nil {
		t.Fatalf("failed to chown: %v", err)
	}
	if err := WriteFile(path, []byte("y\n"), 0o600); err != nil {
		t.Fatalf("failed to write: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o640 || st.Uid != 4242 || st.Gid != 4343 {
		t.Errorf("after write: mode %v, owner %d:%d; want 0640, 4242:4343", fi.Mode().Perm(), st.Uid, st.Gid)
	}
}

func TestRemoveStaleTemp(t *testing.T) {
	dir := mustDir(t, map[string]string{
		"l4nft.yaml":                  "farms: []\n",
		".l4nft.yaml.tmp-123":         "half written",
		".other.yaml.tmp-9":           "someone else's",
		"farms.d/web.yaml":            webFarm,
		"farms.d/.web.yaml.tmp-4567":  "half written",
		"farms.d/.web.yaml.swp":       "an editor's",
		"farms.d/.api.yaml.tmp-00001": "half written",
	})
	removed, err := RemoveStaleTemp(dir, "l4nft.yaml")
	if err != nil || len(removed) != 1 || filepath.Base(removed[0]) != ".l4nft.yaml.tmp-123" {
		t.Errorf("removed %v, %v; want only .l4nft.yaml.tmp-123", removed, err)
	}
	removed, err = RemoveStaleTemp(filepath.Join(dir, FarmsDir), "")
	if err != nil || len(removed) != 2 {
		t.Errorf("removed %v, %v; want the two temporary farm files", removed, err)
	}
	for _, keep := range []string{".other.yaml.tmp-9", "farms.d/.web.yaml.swp", "farms.d/web.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, keep)); err != nil {
			t.Errorf("%s: %v", keep, err)
		}
	}
	if err := RemoveFile(filepath.Join(dir, "farms.d/web.yaml")); err != nil {
		t.Errorf("failed to remove: %v", err)
	}
	if err := RemoveFile(filepath.Join(dir, "farms.d/web.yaml")); err != nil {
		t.Errorf("removing a missing file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "farms.d/web.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the file is still there: %v", err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
