package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempMarker is in the name of every temporary file WriteFile creates:
// ".NAME.tmp-RANDOM" beside the file NAME it replaces.
const tempMarker = ".tmp-"

// WriteFile replaces the file at path with data atomically and durably:
// it writes a temporary file in the same directory, gives it the mode,
// owner and group of the file it replaces (perm and the process's own if
// there is none), syncs it, renames it over path and syncs the directory.
// A symbolic link at path is followed. A reader sees the old content or
// the new, never a mix, and once WriteFile returns nil a crash or a power
// cut cannot lose the new content. A temporary file left by a crash is
// removed by RemoveStaleTemp.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	// Replace the file a symbolic link points to, not the link.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var owner *fileOwner
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
		owner = ownerOf(fi)
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+tempMarker+"*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fail(err)
	}
	if err := owner.apply(tmp); err != nil {
		return fail(fmt.Errorf("keeping the owner and group: %w", err))
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := SyncDir(dir); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// RemoveFile removes the file at path durably: once it returns nil, the
// file stays removed after a crash. A missing file is not an error.
func RemoveFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	if err := SyncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("removing %s: %w", path, err)
	}
	return nil
}

// SyncDir makes the creation, renaming and removal of dir's entries
// durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// RemoveStaleTemp removes the temporary files a WriteFile interrupted by
// a crash left in dir: those of the file named base, or of every file
// when base is empty. It returns the names removed.
func RemoveStaleTemp(dir, base string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("looking for stale temporary files: %w", err)
	}
	var removed []string
	var errs []error
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() || !strings.HasPrefix(n, ".") || !strings.Contains(n, tempMarker) {
			continue
		}
		if base != "" && !strings.HasPrefix(n, "."+base+tempMarker) {
			continue
		}
		p := filepath.Join(dir, n)
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}
