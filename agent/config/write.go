package config

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// MarshalYAML returns c as a YAML document in canonical form: fields in
// the order of the schema, defaults written out.
func (c *Config) MarshalYAML() ([]byte, error) {
	js, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encoding configuration: %w", err)
	}
	// JSON is YAML: reading it back as a node keeps the field order, and
	// clearing the styles lets the encoder write block style, quoting
	// only the strings that need it.
	var n yaml.Node
	if err := yaml.Unmarshal(js, &n); err != nil {
		return nil, fmt.Errorf("encoding configuration: %w", err)
	}
	plain(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return nil, fmt.Errorf("encoding configuration: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encoding configuration: %w", err)
	}
	return buf.Bytes(), nil
}

func plain(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plain(c)
	}
}

// Marshal returns c encoded for a file named name: JSON if the name ends
// in .json, YAML otherwise.
func (c *Config) Marshal(name string) ([]byte, error) {
	if strings.EqualFold(filepath.Ext(name), ".json") {
		b, err := json.MarshalIndent(c, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("encoding configuration: %w", err)
		}
		return append(b, '\n'), nil
	}
	return c.MarshalYAML()
}

// WriteFile replaces the file at path with data atomically: it writes a
// temporary file in the same directory, syncs it, gives it the mode of the
// file it replaces (perm if there is none), renames it over path and syncs
// the directory. A symbolic link at path is followed. A reader sees the old content or the new, never a mix,
// and after a crash the file holds one of them.
func WriteFile(path string, data []byte, perm fs.FileMode) error {
	// Replace the file a symbolic link points to, not the link.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	if fi, err := os.Stat(path); err == nil {
		perm = fi.Mode().Perm()
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
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
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("writing %s: syncing directory: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("writing %s: syncing directory: %w", path, err)
	}
	return nil
}
