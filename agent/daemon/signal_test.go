package daemon

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/lb"
)

// changeLog records the applies that changed the kernel.
type changeLog struct {
	mu      sync.Mutex
	changed []lb.Result
}

func (c *changeLog) ObserveApply(res lb.Result, err error) {
	if err == nil && res.Changed {
		c.mu.Lock()
		c.changed = append(c.changed, res)
		c.mu.Unlock()
	}
}
func (c *changeLog) ObserveReload(error) {}

func (c *changeLog) get() []lb.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]lb.Result(nil), c.changed...)
}

func TestSIGHUPAppliesOnce(t *testing.T) {
	topo, path := mustBareTopology(t)
	log := &changeLog{}
	reload := make(chan struct{}, 1)
	d, _ := mustNewStop(t, topo, path, func(o *Options) { o.Observer, o.WatchInterval = log, -1 }, reload)
	start := len(log.get())

	// The table deleted behind the agent's back and the file edited: one
	// SIGHUP makes one apply of the new file, not a rebuild of the old
	// one followed by the reload.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := topo.Balancer.Command(ctx, "nft", "delete", "table", "inet", "l4nft").CombinedOutput(); err != nil {
		t.Fatalf("failed to delete the table: %v %s", err, out)
	}
	text := fmt.Sprintf(configText, topo.Backends[0].Addr4, topo.Backends[1].Addr4)
	if err := os.WriteFile(path, []byte(strings.Replace(text, "weight: 2", "weight: 5", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitFor(t, "the new weight installed", func() error {
		for _, f := range d.bal.State().Farms {
			for _, b := range f.Backends {
				if b.Name == "backend1" && b.Weight == 5 {
					return nil
				}
			}
		}
		return fmt.Errorf("not yet")
	})
	time.Sleep(100 * time.Millisecond)
	if got := log.get()[start:]; len(got) != 1 || !got[0].Rebuilt {
		t.Errorf("SIGHUP made %d changing applies %+v, want one rebuild", len(got), got)
	}
}

func TestBackoff(t *testing.T) {
	var got []time.Duration
	b := time.Duration(0)
	for range 12 {
		b = nextBackoff(b)
		got = append(got, b)
	}
	if got[0] != minRetry || got[1] != 2*minRetry || got[len(got)-1] != maxRetry {
		t.Errorf("backoff %v, want from %v doubling up to %v", got, minRetry, maxRetry)
	}
}
