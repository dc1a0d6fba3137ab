package daemon

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
)

// A reload finds the files that changed by their meta (size, times,
// inode), reads only those, drops those whose content hash did not change,
// parses what is left and applies only the farms that differ. In a
// configuration directory that costs a stat per file plus what the
// changed files hold; a single file is re-parsed whole when it changes.

// Reload reloads the configuration now: the files changed since they were
// last loaded or written. It returns the *lb.ValidationError of an invalid
// configuration, which leaves everything as it was.
func (d *Daemon) Reload(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloadLocked(ctx, false)
}

// changedFile is a file whose meta differs from the one loaded.
type changedFile struct {
	path    string
	meta    config.FileMeta
	removed bool
}

// scanLocked returns the files that changed since they were loaded.
func (d *Daemon) scanLocked() ([]changedFile, error) {
	return d.compareLocked(d.listFiles())
}

// fileList is what the configuration's files look like on disk now:
// read without the daemon's lock, since in a directory of 10,000 farms it
// costs 10,000 stats, and a change must not wait for them.
type fileList struct {
	main    config.FileMeta // the file, or the directory's main file
	mainErr error
	farms   []config.File // a directory's farm files
	err     error
	// some, when not nil, says only these files were looked at (the
	// ones inotify named): the others are as loaded.
	some map[string]fileStat
}

// fileStat is one file's meta, or why there is none.
type fileStat struct {
	meta config.FileMeta
	err  error
}

// listSome stats the configuration's files among paths, and only them.
func (d *Daemon) listSome(paths []string) fileList {
	l := fileList{some: map[string]fileStat{}}
	farms := filepath.Join(d.opts.ConfigPath, config.FarmsDir)
	for _, p := range paths {
		ours := p == d.opts.ConfigPath
		if d.dir {
			_, farm := config.FarmName(filepath.Base(p))
			ours = p == config.MainPath(d.opts.ConfigPath) || filepath.Dir(p) == farms && farm
		}
		if ours {
			m, err := config.Stat(p)
			l.some[p] = fileStat{m, err}
		}
	}
	return l
}

func (d *Daemon) listFiles() fileList {
	var l fileList
	if !d.dir {
		l.main, l.mainErr = config.Stat(d.opts.ConfigPath)
		return l
	}
	l.main, l.mainErr = config.Stat(config.MainPath(d.opts.ConfigPath))
	l.farms, l.err = config.FarmFiles(d.opts.ConfigPath)
	return l
}

// compareLocked returns the files of l that differ from those loaded.
func (d *Daemon) compareLocked(l fileList) ([]changedFile, error) {
	var out []changedFile
	check := func(path string, m config.FileMeta, err error) error {
		known, ok := d.files[path]
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if ok {
				out = append(out, changedFile{path: path, removed: true})
			}
		case err != nil:
			return err
		case !ok || m != known.Meta:
			out = append(out, changedFile{path: path, meta: m})
		}
		return nil
	}
	if l.some != nil {
		for p, st := range l.some {
			if err := check(p, st.meta, st.err); err != nil {
				return nil, err
			}
		}
		if !d.dir && len(out) == 1 && out[0].removed {
			return nil, fmt.Errorf("reading configuration: %w", fs.ErrNotExist)
		}
		slices.SortFunc(out, func(a, b changedFile) int { return strings.Compare(a.path, b.path) })
		return out, nil
	}
	if !d.dir {
		if err := check(d.opts.ConfigPath, l.main, l.mainErr); err != nil {
			return nil, err
		}
		if len(out) == 1 && out[0].removed {
			return nil, fmt.Errorf("reading configuration: %w", fs.ErrNotExist)
		}
		return out, nil
	}
	if err := check(config.MainPath(d.opts.ConfigPath), l.main, l.mainErr); err != nil {
		return nil, err
	}
	if l.err != nil {
		return nil, l.err
	}
	present := make(map[string]bool, len(l.farms))
	for _, f := range l.farms {
		present[f.Path] = true
		if known, ok := d.files[f.Path]; !ok || known.Meta != f.Meta {
			out = append(out, changedFile{path: f.Path, meta: f.Meta})
		}
	}
	for _, p := range d.farmPath {
		if !present[p] {
			out = append(out, changedFile{path: p, removed: true})
		}
	}
	slices.SortFunc(out, func(a, b changedFile) int { return strings.Compare(a.path, b.path) })
	return out, nil
}

// readFile is a changed file read.
type readFile struct {
	file config.File
	data []byte
}

// reloadLocked loads what changed on disk. With settle, a change is
// loaded only once two consecutive polls have seen it the same: a file
// being written in place can be caught half written, and half a file may
// well be valid YAML.
func (d *Daemon) reloadLocked(ctx context.Context, settle bool) error {
	return d.reloadListedLocked(ctx, settle, d.listFiles())
}

// reloadListedLocked is reloadLocked with the files as listed, perhaps
// without the lock, a moment ago.
func (d *Daemon) reloadListedLocked(ctx context.Context, settle bool, l fileList) error {
	changed, err := d.compareLocked(l)
	if err != nil {
		if d.info.configErr == nil || d.info.configErr.Message != err.Error() {
			d.rejectLocked(err, nil)
		}
		return err
	}
	if len(changed) == 0 {
		return d.currentErrLocked()
	}
	h := sha256.New()
	for _, c := range changed {
		fmt.Fprintf(h, "%s %v %+v\n", c.path, c.removed, c.meta)
	}
	if seen := [32]byte(h.Sum(nil)); settle && seen != d.seenSum {
		d.seenSum, d.seenAt = seen, time.Now() // wait one interval for the writer to finish
		return d.currentErrLocked()
	}
	var reads []readFile
	var removed []string
	h.Reset()
	for _, c := range changed {
		if c.removed {
			removed = append(removed, c.path)
			fmt.Fprintf(h, "removed %s\n", c.path)
			continue
		}
		file, data, err := readConfigFile(c.path, d.opts.MaxFileSize)
		if errors.Is(err, fs.ErrNotExist) && d.dir {
			if _, ok := d.files[c.path]; ok {
				removed = append(removed, c.path)
				fmt.Fprintf(h, "removed %s\n", c.path)
			}
			continue
		}
		if err != nil {
			err = fmt.Errorf("reading configuration: %w", err)
			if d.info.configErr == nil || d.info.configErr.Message != err.Error() {
				d.rejectLocked(err, nil)
			}
			return err
		}
		if known, ok := d.files[c.path]; ok && known.Sum == file.Sum {
			d.files[c.path] = file // touched, not changed
			continue
		}
		reads = append(reads, readFile{file, data})
		fmt.Fprintf(h, "%s %x\n", c.path, file.Sum)
	}
	if len(reads) == 0 && len(removed) == 0 {
		if d.info.configErr != nil { // back to the content in force
			d.log.Info("configuration is back to the version in force", "config", d.opts.ConfigPath)
			d.setInfo(func(in *info) { in.configErr = nil })
			d.badSum = [32]byte{}
		}
		return nil
	}
	sum := [32]byte(h.Sum(nil))
	if sum == d.badSum && d.info.configErr != nil {
		return errors.New(d.info.configErr.Message) // rejected already
	}
	d.setInfo(func(in *info) { in.reloads++ })
	if d.dir {
		err = d.loadDirLocked(ctx, reads, removed)
	} else {
		err = d.loadFileLocked(ctx, reads[0])
	}
	if err != nil && errors.Is(err, lb.ErrInvalid) {
		d.badSum = sum
	}
	return err
}

// changeSum identifies the changes scanLocked found by the files' meta.
func changeSum(changed []changedFile) [32]byte {
	h := sha256.New()
	for _, c := range changed {
		fmt.Fprintf(h, "%s %v %+v\n", c.path, c.removed, c.meta)
	}
	return [32]byte(h.Sum(nil))
}

// settleLocked waits until the changes on disk have been seen unchanged
// for one watch interval (at most a second), as the watcher would before
// loading them, and fails with ErrConflict if they are still changing: a
// file being written in place must not be loaded half written, and an API
// change must not be built on it and written over it.
func (d *Daemon) settleLocked(ctx context.Context) error {
	period := d.opts.WatchInterval
	if period <= 0 {
		period = DefaultWatchInterval
	}
	period = min(period, time.Second)
	changed, err := d.scanLocked()
	if err != nil || len(changed) == 0 {
		return nil // reloadLocked reports it
	}
	sum := changeSum(changed)
	if sum == d.seenSum && time.Since(d.seenAt) >= period {
		return nil
	}
	if sum != d.seenSum {
		d.seenSum, d.seenAt = sum, time.Now()
	}
	t := time.NewTimer(period - time.Since(d.seenAt))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
	}
	changed, err = d.scanLocked()
	if err != nil || len(changed) == 0 {
		return nil
	}
	if changeSum(changed) != sum {
		return fmt.Errorf("%w: %s is being written; retry once it is complete", ErrConflict, d.opts.ConfigPath)
	}
	return nil
}

// currentErrLocked is the error of the configuration on disk, if it is
// rejected.
func (d *Daemon) currentErrLocked() error {
	if ce := d.info.configErr; ce != nil {
		return errors.New(ce.Message)
	}
	return nil
}

// change replaces one farm: prev by next, either nil for a farm added or
// removed.
type change struct {
	name       string
	prev, next *config.Farm
	path       string // directory: the farm's file after the change
}

// loadFileLocked loads the single configuration file's new content.
func (d *Daemon) loadFileLocked(ctx context.Context, r readFile) error {
	cfg, err := config.ParseAndValidate(d.opts.ConfigPath, r.data)
	if err != nil {
		d.rejectErrLocked(err)
		return err
	}
	var changes []change
	seen := make(map[string]bool, len(cfg.Farms))
	for i := range cfg.Farms {
		f := &cfg.Farms[i]
		seen[f.Name] = true
		if prev := d.index[f.Name]; prev == nil || !prev.Equal(f) {
			changes = append(changes, change{name: f.Name, prev: prev, next: f})
		}
	}
	for _, f := range d.farms {
		if !seen[f.Name] {
			changes = append(changes, change{name: f.Name, prev: f})
		}
	}
	next := func() []*config.Farm {
		out := make([]*config.Farm, len(cfg.Farms))
		for i := range cfg.Farms {
			out[i] = &cfg.Farms[i]
		}
		return out
	}
	return d.loadChangesLocked(ctx, cfg, changes, next, func() {
		d.files[r.file.Path] = r.file
		for _, c := range changes {
			delete(d.frags, c.name)
		}
	})
}

// loadDirLocked loads the changed and removed files of the configuration
// directory.
func (d *Daemon) loadDirLocked(ctx context.Context, reads []readFile, removed []string) error {
	main := config.MainPath(d.opts.ConfigPath)
	var problems []lb.Problem
	add := func(err error) {
		if ps := config.Problems(err); ps != nil {
			problems = append(problems, ps...)
		} else if err != nil {
			problems = append(problems, config.ProblemAt("", 0, "", err.Error()))
		}
	}
	top := d.top
	byName := map[string]*change{}
	pathFarm := make(map[string]string, len(d.farmPath))
	for name, p := range d.farmPath {
		pathFarm[p] = name
	}
	for _, p := range removed {
		if p == main {
			top = &config.Config{}
			top.SetSource(main)
			continue
		}
		if name, ok := pathFarm[p]; ok {
			byName[name] = &change{name: name, prev: d.index[name]}
		}
	}
	for _, r := range reads {
		if r.file.Path == main {
			c, err := config.ParseMain(main, r.data)
			add(err)
			if err == nil {
				add(config.ValidateTop(c))
				top = c
			}
			continue
		}
		f, err := config.ParseFarmFile(r.file.Path, r.data)
		if err == nil {
			err = config.ValidateFarm(&f, d.lbOpts)
		}
		add(err)
		if f.Name == "" {
			continue
		}
		if other, ok := d.farmPath[f.Name]; ok && other != r.file.Path && !slices.Contains(removed, other) {
			add(fmt.Errorf("%s: farm %q is in two files (also %s)", r.file.Path, f.Name, other))
			continue
		}
		byName[f.Name] = &change{name: f.Name, prev: d.index[f.Name], next: &f, path: r.file.Path}
	}
	if len(problems) > 0 {
		err := &lb.ValidationError{Problems: problems}
		d.rejectLocked(err, problems)
		return err
	}
	changes := make([]change, 0, len(byName))
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		c := byName[name]
		if c.prev == nil && c.next == nil {
			continue
		}
		if c.prev != nil && c.next != nil && c.prev.Equal(c.next) {
			d.farmPath[name] = c.path // the same farm, maybe in a renamed file
			continue
		}
		changes = append(changes, *c)
	}
	cfg := *top
	return d.loadChangesLocked(ctx, &cfg, changes, func() []*config.Farm { return d.withChanges(changes) }, func() {
		for _, r := range reads {
			d.files[r.file.Path] = r.file
		}
		for _, p := range removed {
			delete(d.files, p)
		}
		for _, c := range changes {
			if c.next == nil {
				delete(d.farmPath, c.name)
			} else {
				d.farmPath[c.name] = c.path
			}
		}
		for _, c := range byName {
			if c.next != nil && d.farmPath[c.name] != c.path {
				d.farmPath[c.name] = c.path
			}
		}
	})
}

// loadChangesLocked applies a reload's changes, then makes top and the
// farms next returns the configuration in force and calls commit.
func (d *Daemon) loadChangesLocked(ctx context.Context, top *config.Config, changes []change, next func() []*config.Farm, commit func()) error {
	d.warnRestartLocked(top)
	err := d.applyLocked(ctx, "reload", changes, next)
	if errors.Is(err, lb.ErrInvalid) {
		d.rejectErrLocked(err)
		return err
	}
	t := *top
	t.Farms = nil
	if d.dir {
		// A few files changed: publish their farms in place.
		for _, c := range changes {
			d.commitLocked(c)
		}
		d.view.Lock()
		d.top = &t
		d.info.configErr = nil
		d.view.Unlock()
	} else {
		// The file was parsed whole, maybe reordered: publish it whole.
		farms := next()
		index := make(map[string]*config.Farm, len(farms))
		for _, f := range farms {
			index[f.Name] = f
		}
		d.view.Lock()
		d.top, d.farms, d.index = &t, farms, index
		d.info.configErr = nil
		d.view.Unlock()
	}
	d.badSum = [32]byte{}
	commit()
	if err != nil {
		// The kernel refused it: keep running what runs, and retry.
		d.needFull = true
		d.obs.ObserveReload(err)
		d.log.Error("configuration valid but not applied; retrying", "config", d.opts.ConfigPath, "err", err)
		return err
	}
	d.obs.ObserveReload(nil)
	d.log.Info("configuration reloaded", "config", d.opts.ConfigPath, "farms", len(d.farms), "changed", len(changes))
	return nil
}

// withChanges returns the farms in force with changes made: replaced in
// place, removed, or added at the end.
func (d *Daemon) withChanges(changes []change) []*config.Farm {
	byName := make(map[string]*change, len(changes))
	for i := range changes {
		byName[changes[i].name] = &changes[i]
	}
	out := make([]*config.Farm, 0, len(d.farms)+len(changes))
	for _, f := range d.farms {
		c, ok := byName[f.Name]
		switch {
		case !ok:
			out = append(out, f)
		case c.next != nil:
			out = append(out, c.next)
		}
	}
	for _, c := range changes {
		if c.prev == nil && c.next != nil {
			out = append(out, c.next)
		}
	}
	return out
}

// maxIncremental is the number of changed farms above which a reload
// applies the whole state in one transaction rather than farm by farm.
const maxIncremental = 64

// applyLocked makes the kernel match changes: farm by farm (each checked
// by the library against the farms installed), or, for many changes or
// changes that only work together (a port moved from one farm to
// another), the whole state at once. On failure the kernel is left as it
// was, as far as it lets itself be. Validation errors come back as a
// *lb.ValidationError located in the farms' sources.
func (d *Daemon) applyLocked(ctx context.Context, reason string, changes []change, next func() []*config.Farm) error {
	for _, c := range changes {
		if c.next != nil {
			d.mon.UpdateFarm(c.name, c.next.HealthTargets())
		} else {
			d.mon.UpdateFarm(c.name, nil)
		}
	}
	undoHealth := func() {
		for _, c := range changes {
			if c.prev != nil {
				d.mon.UpdateFarm(c.name, c.prev.HealthTargets())
			} else {
				d.mon.UpdateFarm(c.name, nil)
			}
		}
	}
	whole := func() error {
		farms := next()
		s := lb.State{Farms: make([]lb.Farm, len(farms))}
		for i, f := range farms {
			s.Farms[i] = d.effective(f)
		}
		res, err := d.bal.Apply(ctx, s)
		if err = d.recordLocked(reason, res, err); err == nil {
			d.needFull = false
			return nil
		}
		return locate(err, func(name string) *config.Farm {
			if i := slices.IndexFunc(farms, func(f *config.Farm) bool { return f.Name == name }); i >= 0 {
				return farms[i]
			}
			return nil
		})
	}
	if len(changes) > maxIncremental || d.whole {
		err := whole()
		if err != nil {
			undoHealth()
		}
		return err
	}
	var err error
	done := 0
	for _, c := range changes {
		if err = d.applyOneLocked(ctx, reason, c.name, c.next); err != nil {
			if c.next != nil {
				err = config.LocateFarm(c.next, err)
			}
			break
		}
		done++
	}
	if err == nil {
		return nil
	}
	if errors.Is(err, lb.ErrInvalid) && len(changes) > 1 {
		if werr := whole(); werr == nil {
			return nil
		}
	}
	for i := done - 1; i >= 0; i-- { // undo
		if uerr := d.applyOneLocked(ctx, "rollback", changes[i].name, changes[i].prev); uerr != nil {
			d.needFull = true
		}
	}
	undoHealth()
	return err
}

// applyOneLocked installs farm f, or removes the farm named name if f is
// nil.
func (d *Daemon) applyOneLocked(ctx context.Context, reason, name string, f *config.Farm) error {
	var res lb.Result
	var err error
	if f == nil {
		res, err = d.bal.RemoveFarm(ctx, name)
		if errors.Is(err, lb.ErrNoFarm) {
			res, err = lb.Result{}, nil
		}
	} else {
		res, err = d.bal.SetFarm(ctx, d.effective(f))
	}
	return d.recordLocked(reason, res, err)
}

// locate turns the lb.ValidationError of a whole apply into a
// *lb.ValidationError, each problem located in its farm's source.
func locate(err error, farm func(string) *config.Farm) error {
	var ve *lb.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	var problems []lb.Problem
	for _, p := range ve.Problems {
		one := &lb.ValidationError{Problems: []lb.Problem{p}}
		if f := farm(p.Farm); f != nil {
			if ps := config.Problems(config.LocateFarm(f, one)); ps != nil {
				problems = append(problems, ps...)
				continue
			}
		}
		problems = append(problems, p)
	}
	return &lb.ValidationError{Problems: problems}
}

func (d *Daemon) setInfo(f func(*info)) {
	d.view.Lock()
	f(&d.info)
	d.view.Unlock()
}

// rejectErrLocked rejects the configuration err is about.
func (d *Daemon) rejectErrLocked(err error) {
	d.rejectLocked(err, config.Problems(err))
}

func (d *Daemon) rejectLocked(err error, problems []lb.Problem) {
	d.obs.ObserveReload(err)
	ce := &ConfigError{Time: time.Now(), Message: err.Error(), Problems: problems}
	d.setInfo(func(in *info) {
		in.rejected++
		in.configErr = ce
	})
	args := []any{"config", d.opts.ConfigPath, "err", err}
	if len(problems) > 0 {
		args = []any{"config", d.opts.ConfigPath, "problems", len(problems)}
		for i, p := range problems {
			args = append(args, "problem"+strconv.Itoa(i+1), p.String())
		}
	}
	d.log.Error("configuration rejected; still running the previous one", args...)
}

// warnRestartLocked logs the settings that only a restart changes.
func (d *Daemon) warnRestartLocked(next *config.Config) {
	cur := d.top
	if next.TableName() != cur.TableName() || next.Options != cur.Options {
		d.log.Warn("table and options changes take effect at the next restart", "table", cur.TableName(), "new_table", next.TableName())
	}
	if next.API != cur.API {
		d.log.Warn("api changes take effect at the next restart")
	}
}
