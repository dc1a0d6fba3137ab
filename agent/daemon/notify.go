package daemon

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"
	"github.com/l4nft/l4nft/agent/config"
)

// notifier tells the daemon which configuration files changed, from the
// kernel's inotify events, so that an edit is seen at once and costs a
// stat of the file edited, not of all 10,000 farm files every interval.
// Events can be lost (the queue overflows) or not come at all (some
// network file systems): the polling tick stays, as the backstop.
type notifier struct {
	w     *fsnotify.Watcher
	kick  chan struct{}
	mu    sync.Mutex
	paths map[string]bool
	all   bool // events were lost: look at everything
}

// newNotifier watches the directories of the configuration's files; it
// returns nil if inotify is not available.
func newNotifier(configPath string, dir bool) *notifier {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil
	}
	dirs := []string{filepath.Dir(configPath)}
	if dir {
		dirs = []string{configPath, filepath.Join(configPath, config.FarmsDir)}
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil && !os.IsNotExist(err) {
			w.Close()
			return nil
		}
	}
	return &notifier{w: w, kick: make(chan struct{}, 1), paths: map[string]bool{}}
}

// close stops watching; run returns.
func (n *notifier) close() { n.w.Close() }

// run collects events until ctx is done or the notifier is closed.
func (n *notifier) run(ctx context.Context) {
	defer n.w.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-n.w.Events:
			if !ok {
				return
			}
			n.mu.Lock()
			n.paths[ev.Name] = true
			n.mu.Unlock()
		case _, ok := <-n.w.Errors:
			if !ok {
				return
			}
			n.mu.Lock()
			n.all = true
			n.mu.Unlock()
		}
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

// take returns the paths changed since the last call, or all=true when
// events were lost.
func (n *notifier) take() (paths []string, all bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for p := range n.paths {
		paths = append(paths, p)
	}
	all, n.all, n.paths = n.all, false, map[string]bool{}
	return paths, all
}
