package lb

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// stateFile is what Options.StateFile holds: enough to adopt the table
// without reading it back, and what proves the table is still that one.
type stateFile struct {
	Identity   string      `json:"identity"`
	Generation uint32      `json:"generation"`
	Schema     string      `json:"schema"`
	Farms      []Farm      `json:"farms"`
	Marks      []savedMark `json:"marks"`
}

type savedMark struct {
	Farm    string `json:"farm"`
	Backend string `json:"backend,omitempty"`
	Mark    uint32 `json:"mark"`
}

// loadStateFile adopts what the state file says if it still describes
// the kernel, and reports whether it did. It changes b only then.
func (b *Balancer) loadStateFile() bool {
	if b.opts.StateFile == "" {
		return false
	}
	data, err := os.ReadFile(b.opts.StateFile)
	if err != nil {
		return false
	}
	var sf stateFile
	if err := json.Unmarshal(data, &sf); err != nil {
		b.opts.Logger.Warn("state file unreadable; reading the table back", "file", b.opts.StateFile, "err", err)
		return false
	}
	id, err := b.conn.Identity()
	if err != nil || id != sf.Identity || sf.Schema != schemaComment(b.opts) {
		return false
	}
	gen, err := b.conn.Generation()
	if err != nil || gen != sf.Generation {
		return false
	}
	marks := markMap{}
	for _, m := range sf.Marks {
		marks[objectKey{m.Farm, m.Backend}] = m.Mark
	}
	for _, f := range sf.Farms {
		if _, ok := marks[objectKey{f.Name, ""}]; !ok {
			return false
		}
		for _, be := range f.Backends {
			if _, ok := marks[objectKey{f.Name, be.Name}]; !ok {
				return false
			}
		}
	}
	for _, f := range sf.Farms {
		b.farms[f.Name] = compileFarm(f, marks, b.opts.MarkMask, false)
		b.order = append(b.order, f.Name)
		b.services.add(f)
	}
	for k, m := range marks {
		b.marks.owner[k], b.marks.used[m] = m, k
	}
	b.rebuild, b.gen = false, gen
	return true
}

// saveStateFile writes the state file, or removes it when what the
// Balancer knows is not what the kernel holds right now.
func (b *Balancer) saveStateFile() error {
	if b.opts.StateFile == "" {
		return nil
	}
	gen, err := b.conn.Generation()
	id, ierr := b.conn.Identity()
	if err != nil || ierr != nil || b.rebuild || b.gen == 0 || gen != b.gen || len(b.orphans) > 0 || len(b.orphanChains) > 0 {
		if err := os.Remove(b.opts.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	sf := stateFile{Identity: id, Generation: gen, Schema: schemaComment(b.opts)}
	for _, name := range b.order {
		c := b.farms[name]
		if c.dirty {
			return os.Remove(b.opts.StateFile)
		}
		sf.Farms = append(sf.Farms, c.spec)
	}
	for k, m := range b.marks.owner {
		sf.Marks = append(sf.Marks, savedMark{k.farm, k.backend, m})
	}
	data, err := json.Marshal(sf)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(b.opts.StateFile), ".l4nft-state-*")
	if err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing state file: %w", err)
	}
	return os.Rename(tmp.Name(), b.opts.StateFile)
}
