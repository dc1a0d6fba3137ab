package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
)

// An API change validates the one farm it touches, applies that farm
// (lb.Balancer.SetFarm checks its conflicts with the others), persists it
// and only then publishes it in place of the old one. In a configuration
// directory it rewrites the farm's own file; a single file is assembled
// from every farm's encoded item, kept from the last write, so only the
// changed farm is encoded again.

// BackendChange changes one backend; nil fields stay as they are.
type BackendChange struct {
	Weight *int             `json:"weight,omitempty"`
	State  *lb.BackendState `json:"state,omitempty"`
}

// Farms returns the configured farms.
func (d *Daemon) Farms() []config.Farm {
	d.view.RLock()
	farms := slices.Clone(d.farms)
	d.view.RUnlock()
	out := make([]config.Farm, len(farms))
	for i, f := range farms {
		out[i] = f.Clone()
	}
	return out
}

// Farm returns the farm named name, or ErrNotFound.
func (d *Daemon) Farm(name string) (config.Farm, error) {
	d.view.RLock()
	f := d.index[name]
	d.view.RUnlock()
	if f == nil {
		return config.Farm{}, fmt.Errorf("farm %q: %w", name, ErrNotFound)
	}
	return f.Clone(), nil
}

// CreateFarm adds a farm; ErrExists if one has its name.
func (d *Daemon) CreateFarm(ctx context.Context, f config.Farm) error {
	return d.change(ctx, "api: create farm "+f.Name, f.Name, func(cur *config.Farm) (*config.Farm, error) {
		if cur != nil {
			return nil, fmt.Errorf("farm %q: %w", f.Name, ErrExists)
		}
		return &f, nil
	})
}

// PutFarm creates or replaces the farm named f.Name and reports whether it
// was created.
func (d *Daemon) PutFarm(ctx context.Context, f config.Farm) (created bool, err error) {
	err = d.change(ctx, "api: put farm "+f.Name, f.Name, func(cur *config.Farm) (*config.Farm, error) {
		created = cur == nil
		return &f, nil
	})
	return created, err
}

// DeleteFarm removes a farm; ErrNotFound if there is none.
func (d *Daemon) DeleteFarm(ctx context.Context, name string) error {
	return d.change(ctx, "api: delete farm "+name, name, func(cur *config.Farm) (*config.Farm, error) {
		if cur == nil {
			return nil, fmt.Errorf("farm %q: %w", name, ErrNotFound)
		}
		return nil, nil
	})
}

// SetBackend changes one backend's weight or state and returns it.
func (d *Daemon) SetBackend(ctx context.Context, farm, backend string, ch BackendChange) (config.Backend, error) {
	var out config.Backend
	err := d.change(ctx, fmt.Sprintf("api: backend %s/%s", farm, backend), farm, func(cur *config.Farm) (*config.Farm, error) {
		if cur == nil {
			return nil, fmt.Errorf("farm %q: %w", farm, ErrNotFound)
		}
		j := slices.IndexFunc(cur.Backends, func(x config.Backend) bool { return x.Name == backend })
		if j < 0 {
			return nil, fmt.Errorf("backend %q of farm %q: %w", backend, farm, ErrNotFound)
		}
		next := cur.Clone()
		if ch.Weight != nil {
			next.Backends[j].Weight = *ch.Weight
		}
		if ch.State != nil {
			next.Backends[j].State = *ch.State
		}
		out = next.Backends[j]
		return &next, nil
	})
	return out, err
}

// change replaces the farm named name by what build returns from the
// current one (nil when there is none; build returns nil to delete it):
// validated alone, applied, persisted, then published.
func (d *Daemon) change(ctx context.Context, reason, name string, build func(cur *config.Farm) (*config.Farm, error)) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.syncBeforeChangeLocked(ctx, name); errors.Is(err, ErrConflict) {
		return err
	} else if err != nil {
		return fmt.Errorf("%w: %s cannot be loaded, fix it first: %w", ErrConflict, d.opts.ConfigPath, err)
	}
	prev := d.index[name]
	next, err := build(prev)
	if err != nil {
		return err
	}
	if next != nil {
		if err := config.ValidateFarm(next, d.lbOpts); err != nil {
			return err
		}
	}
	c := change{name: name, prev: prev, next: next}
	if d.dir {
		c.path = d.farmPath[name]
		if c.path == "" {
			c.path = config.FarmPath(d.opts.ConfigPath, name)
		}
	}
	changes := []change{c}
	if err := d.applyLocked(ctx, reason, changes, func() []*config.Farm { return d.withChanges(changes) }); err != nil {
		if errors.Is(err, lb.ErrInvalid) {
			return err
		}
		return fmt.Errorf("applying: %w", err)
	}
	start := time.Now()
	if err := d.persistLocked(c); err != nil {
		undo := []change{{name: name, prev: next, next: prev, path: c.path}}
		rerr := d.applyLocked(ctx, "rollback", undo, func() []*config.Farm { return d.withChanges(nil) })
		return errors.Join(fmt.Errorf("persisting the change (rolled back): %w", err), rerr)
	}
	d.commitLocked(c)
	d.log.Info("change persisted", "reason", reason, "file", d.fileOf(c), "persist", time.Since(start))
	return nil
}

func (d *Daemon) fileOf(c change) string {
	if d.dir {
		return c.path
	}
	return d.opts.ConfigPath
}

// syncBeforeChangeLocked loads an edit of the files a change to farm
// name would overwrite, if the watcher has not loaded it yet, so that the
// change is built on it rather than losing it. It fails if they cannot be
// loaded. It costs a stat or two when nothing changed.
func (d *Daemon) syncBeforeChangeLocked(ctx context.Context, name string) error {
	paths := []string{d.opts.ConfigPath}
	if d.dir {
		p := d.farmPath[name]
		if p == "" {
			p = config.FarmPath(d.opts.ConfigPath, name)
		}
		paths = []string{config.MainPath(d.opts.ConfigPath), p}
	}
	for _, p := range paths {
		m, err := config.Stat(p)
		known, ok := d.files[p]
		if errors.Is(err, fs.ErrNotExist) && !ok {
			continue
		}
		if err == nil && ok && m == known.Meta {
			continue
		}
		// Something changed: load it once it is complete, and build on
		// it if it is valid.
		if err := d.settleLocked(ctx); err != nil {
			return err
		}
		if err := d.reloadLocked(ctx, false); err != nil {
			return err
		}
		if d.info.configErr != nil && !d.dir {
			return errors.New(d.info.configErr.Message)
		}
		return nil
	}
	if !d.dir {
		return d.currentErrLocked()
	}
	return nil
}

// persistLocked writes change c to disk durably.
func (d *Daemon) persistLocked(c change) error {
	if d.dir {
		return d.persistFarmFileLocked(c)
	}
	path := d.opts.ConfigPath
	farms := d.withChanges([]change{c})
	frags := make([][]byte, len(farms))
	var encoded []int
	for i, f := range farms {
		frag, ok := d.frags[f.Name]
		if !ok || f == c.next {
			frag = f.Fragment(path)
			encoded = append(encoded, i)
		}
		frags[i] = frag
	}
	data := d.top.Assemble(path, frags)
	if err := config.WriteFile(path, data, 0o600); err != nil {
		return err
	}
	m, err := config.Stat(path)
	if err != nil {
		return err
	}
	d.files[path] = config.File{Path: path, Meta: m, Sum: sha256.Sum256(data)}
	delete(d.frags, c.name)
	for _, i := range encoded {
		d.frags[farms[i].Name] = frags[i]
	}
	return nil
}

// persistFarmFileLocked writes or removes the farm file of c.
func (d *Daemon) persistFarmFileLocked(c change) error {
	if c.next == nil {
		if err := config.RemoveFile(c.path); err != nil {
			return err
		}
		delete(d.files, c.path)
		return nil
	}
	perm := fs.FileMode(0o600)
	if fi, err := os.Stat(config.MainPath(d.opts.ConfigPath)); err == nil {
		perm = fi.Mode().Perm() // a new farm file is as private as the main file
	}
	dir := filepath.Dir(c.path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", dir, err)
		}
		if err := config.SyncDir(filepath.Dir(dir)); err != nil {
			return err
		}
	}
	data := c.next.MarshalFarmFile(c.path)
	if err := config.WriteFile(c.path, data, perm); err != nil {
		return err
	}
	m, err := config.Stat(c.path)
	if err != nil {
		return err
	}
	d.files[c.path] = config.File{Path: c.path, Meta: m, Sum: sha256.Sum256(data)}
	return nil
}

// commitLocked publishes change c in the configuration in force, in
// place: the farm's slot takes the new farm, and nothing else is copied.
func (d *Daemon) commitLocked(c change) {
	d.view.Lock()
	defer d.view.Unlock()
	switch {
	case c.next == nil:
		if i := slices.Index(d.farms, c.prev); i >= 0 {
			d.farms = slices.Delete(d.farms, i, i+1)
		}
		delete(d.index, c.name)
	case c.prev == nil:
		d.farms = append(d.farms, c.next)
		d.index[c.name] = c.next
	default:
		if i := slices.Index(d.farms, c.prev); i >= 0 {
			d.farms[i] = c.next
		}
		d.index[c.name] = c.next
	}
	if d.dir {
		if c.next == nil {
			delete(d.farmPath, c.name)
		} else {
			d.farmPath[c.name] = c.path
		}
	} else {
		d.info.configErr = nil // the file was rewritten
		d.badSum = [32]byte{}
	}
}
