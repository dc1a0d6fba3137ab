package config

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// aliasBomb returns a document of about size bytes whose aliases expand
// exponentially (a "billion laughs"), placed in a known field so that a
// parser that follows aliases would walk it.
func aliasBomb(size int) []byte {
	const width = 40
	var b strings.Builder
	b.WriteString("farms:\n  - name: web\n    address: 198.51.100.250\n    ports: &a0 [" + strings.Repeat("\"1\",", width-1) + "\"1\"]\n")
	for i := 1; b.Len() < size; i++ {
		fmt.Fprintf(&b, "  - name: w%d\n    address: 198.51.100.%d\n    backends: &a%d [", i, i%250+1, i)
		for j := range width {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	return []byte(b.String())
}

// An alias bomb is refused quickly, in bounded memory, with a clear error.
func TestAliasBombIsRefused(t *testing.T) {
	for _, size := range []int{18 << 10, 36 << 10} {
		data := aliasBomb(size)
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, err := ParseAndValidate("bomb.yaml", data)
		elapsed := time.Since(start)
		runtime.ReadMemStats(&after)
		if err == nil || !strings.Contains(err.Error(), "YAML aliases expand the document by more than") {
			t.Errorf("%d-byte bomb: %v, want the aliases refused", len(data), err)
		}
		if elapsed > 2*time.Second {
			t.Errorf("%d-byte bomb took %s", len(data), elapsed)
		}
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
			t.Errorf("%d-byte bomb allocated %d MB", len(data), alloc>>20)
		}
	}
	// Aliases that expand a little are fine.
	ok := "farms:\n  - name: web\n    address: 198.51.100.250\n    ports: &p [\"80\"]\n    backends:\n      - &b {name: a, address: 203.0.113.10}\n" +
		"  - name: db\n    address: 198.51.100.251\n    ports: *p\n    backends: [*b]\n"
	if _, err := ParseAndValidate("ok.yaml", []byte(ok)); err != nil {
		t.Errorf("small aliases refused: %v", err)
	}
}

// The number of farms and backends is capped, by default and as the file
// says, with an error naming the limit; what is beyond it is not read.
func TestLimits(t *testing.T) {
	text := "limits: {max_farms: 2, max_backends: 1}\nfarms:\n" +
		"  - {name: a, address: 198.51.100.1, ports: [\"80\"], backends: [{name: x, address: 203.0.113.1}, {name: y, address: 203.0.113.2}]}\n" +
		"  - {name: b, address: 198.51.100.2, ports: [\"80\"]}\n" +
		"  - {name: c, address: 198.51.100.3, ports: [\"80\"]}\n"
	_, err := ParseAndValidate("l.yaml", []byte(text))
	want := []string{
		"l.yaml:3: farms[a].backends: 2 backends: more than limits.max_backends (1)",
		"l.yaml:3: farms: 3 farms: more than limits.max_farms (2)",
	}
	got := problemStrings(t, err)
	if len(got) != 2 || !strings.Contains(strings.Join(got, "\n"), want[0]) || !strings.Contains(strings.Join(got, "\n"), "farms: 3 farms: more than limits.max_farms (2)") {
		t.Errorf("problems %q, want %q", got, want)
	}
	// In a directory, the farm files count.
	dir := t.TempDir()
	mustWriteFile(t, filepath.Join(dir, MainFile), "limits: {max_farms: 1}\n")
	for _, n := range []string{"a", "b"} {
		mustWriteFile(t, filepath.Join(dir, FarmsDir, n+".yaml"), "address: 198.51.100.1\nports: [\"80\"]\n")
	}
	if _, _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "2 farm files: more than limits.max_farms (1)") {
		t.Errorf("directory over the limit: %v", err)
	}
}

func mustWriteFile(tb testing.TB, path, text string) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatalf("failed to create %s: %v", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatalf("failed to write %s: %v", path, err)
	}
}
