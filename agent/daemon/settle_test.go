package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// secondFarm follows configText's farm.
const secondFarm = `  - name: web2
    address: 198.51.100.251
    ports: ["80"]
    backends:
      - {name: backend0, address: %s, port: 80, weight: 1}
`

func TestAPIChangeWaitsForAFileBeingWritten(t *testing.T) {
	topo, path := mustBareTopology(t)
	first := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	second := fmt.Sprintf(secondFarm, topo.Backends[0].Addr4)
	if err := os.WriteFile(path, []byte(first+second), 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ := mustNewStop(t, topo, path, func(o *Options) { o.WatchInterval = 300 * time.Millisecond }, nil)

	// An editor rewrites the file in place, with a pause after web's part:
	// half the file is valid YAML without web2.
	edited := strings.Replace(first, "weight: 2", "weight: 4", 1)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(edited); err != nil {
		t.Fatal(err)
	}
	finished := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond)
		_, err := f.WriteString(second)
		finished <- errors.Join(err, f.Close())
	}()
	w := 3
	_, err = d.SetBackend(context.Background(), "web", "backend0", BackendChange{Weight: &w})
	if !errors.Is(err, ErrConflict) {
		t.Errorf("a change while the file is being written: %v, want ErrConflict", err)
	}
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
	if got := len(d.Farms()); got != 2 {
		t.Errorf("%d farms in force, want 2: the half-written file was loaded", got)
	}
	// Once the file is complete, the change builds on the whole edit.
	waitFor(t, "the change accepted", func() error {
		_, err := d.SetBackend(context.Background(), "web", "backend0", BackendChange{Weight: &w})
		return err
	})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "web2") || !strings.Contains(string(data), "weight: 4") {
		t.Errorf("the file after the change lost the edit:\n%s", data)
	}
}
