package config

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/l4nft/l4nft/lb"
)

// The names in a configuration directory.
const (
	// MainFile holds table, options and api (optional; JSON if it is
	// named l4nft.json instead).
	MainFile = "l4nft.yaml"
	// FarmsDir holds one file per farm, NAME.yaml (or .yml, or .json),
	// holding the farm named NAME.
	FarmsDir = "farms.d"
)

var mainFiles = []string{MainFile, "l4nft.yml", "l4nft.json"}

var farmExts = []string{".yaml", ".yml", ".json"}

// IsDir reports whether path is a configuration directory rather than a
// file.
func IsDir(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir()
}

// FileMeta is what tells a changed file from an unchanged one without
// reading it: size, modification and change times, device and inode (a
// rename over the file, as editors and Kubernetes do, changes the inode).
type FileMeta struct {
	Size           int64
	ModTime, CTime int64
	Dev, Ino       uint64
}

// Stat returns the meta of the file at path, following symbolic links.
func Stat(path string) (FileMeta, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return FileMeta{}, err
	}
	return fileMeta(fi), nil
}

// File is one file of a configuration: where, its meta and its content's
// hash.
type File struct {
	Path string
	Meta FileMeta
	Sum  [32]byte
}

// ReadFile reads the file at path with its meta.
func ReadFile(path string) (File, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return File{}, nil, err
	}
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()+512))
	if _, err := buf.ReadFrom(f); err != nil {
		return File{}, nil, err
	}
	data := buf.Bytes()
	return File{Path: path, Meta: fileMeta(fi), Sum: sha256.Sum256(data)}, data, nil
}

// MainPath returns the main file of the configuration directory dir: the
// first of l4nft.yaml, l4nft.yml, l4nft.json that exists, else
// dir/l4nft.yaml.
func MainPath(dir string) string {
	for _, n := range mainFiles {
		p := filepath.Join(dir, n)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return filepath.Join(dir, MainFile)
}

// FarmName returns the farm a file of FarmsDir holds, and false for a
// file that is not a farm file: hidden files (such as the temporary files
// of editors and of WriteFile) and names without a .yaml, .yml or .json
// extension (such as web.yaml~ or web.yaml.dpkg-old) are ignored.
func FarmName(file string) (string, bool) {
	if strings.HasPrefix(file, ".") {
		return "", false
	}
	ext := filepath.Ext(file)
	for _, e := range farmExts {
		if strings.EqualFold(ext, e) && len(file) > len(ext) {
			return file[:len(file)-len(ext)], true
		}
	}
	return "", false
}

// FarmPath returns the file a new farm named name gets in the
// configuration directory dir.
func FarmPath(dir, name string) string {
	return filepath.Join(dir, FarmsDir, name+".yaml")
}

// FarmFiles lists the farm files of the configuration directory dir,
// sorted by name, with their meta (not their content).
func FarmFiles(dir string) ([]File, error) {
	fd := filepath.Join(dir, FarmsDir)
	entries, err := os.ReadDir(fd)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading configuration directory: %w", err)
	}
	files := make([]File, 0, len(entries))
	for _, e := range entries {
		if _, ok := FarmName(e.Name()); !ok || e.IsDir() {
			continue
		}
		p := filepath.Join(fd, e.Name())
		m, err := Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed meanwhile, or a dangling link
			}
			return nil, fmt.Errorf("reading configuration directory: %w", err)
		}
		files = append(files, File{Path: p, Meta: m})
	}
	return files, nil
}

// ParseMain parses the main file of a configuration directory, named
// name: table, options and api. Farms are not allowed there.
func ParseMain(name string, data []byte) (*Config, error) {
	if len(strings.TrimSpace(string(data))) == 0 {
		return &Config{src: name, pos: positions{}, Farms: []Farm{}}, nil // all defaults
	}
	c, err := Parse(name, data)
	if c == nil {
		return nil, err
	}
	problems := Problems(err)
	if line, ok := c.pos["farms"]; ok {
		problems = append(problems, ProblemAt(name, line, "farms",
			"in a configuration directory each farm has its own file in "+FarmsDir+"/"))
		c.Farms = []Farm{}
	}
	return c, newError(problems)
}

// ParseFarmFile parses the file at path in FarmsDir, holding one farm
// named after the file: its name field may be omitted, and must match the
// file's name when present.
func ParseFarmFile(path string, data []byte) (Farm, error) {
	return parseFarmFile(path, data, Limits{})
}

func parseFarmFile(path string, data []byte, lim Limits) (Farm, error) {
	want, _ := FarmName(filepath.Base(path))
	p := &parser{file: path, limits: lim.WithDefaults()}
	root, err := p.document(data)
	if err != nil {
		return Farm{}, err
	}
	f := p.farmNamed(root, want)
	f.src = path
	if f.Name == "" {
		f.Name = want
	} else if f.Name != want {
		p.problems = append(p.problems, ProblemAt(path, f.pos.lookup("name"), "farms["+want+"].name",
			fmt.Sprintf("%q is not the name of the file: a farm file holds the farm it is named after", f.Name)))
		f.Name = want
	}
	return f, newError(p.problems)
}

// LoadDir reads, parses and validates the configuration directory dir.
// On any problem it returns an *Error listing all of them.
func LoadDir(dir string) (*Config, []File, error) {
	c, files, err := ParseDir(dir)
	if c == nil {
		return nil, nil, err
	}
	verr := Validate(c)
	if err == nil && verr == nil {
		return c, files, nil
	}
	return nil, nil, Merge(err, verr)
}

// ParseDir parses the configuration directory dir without validating it,
// and returns the files read: the main file (first, if it exists) and the
// farm files.
func ParseDir(dir string) (*Config, []File, error) {
	mainPath := MainPath(dir)
	var files []File
	var c *Config
	var problems []lb.Problem
	add := func(err error) {
		if ps := Problems(err); ps != nil {
			problems = append(problems, ps...)
		} else if err != nil {
			problems = append(problems, ProblemAt("", 0, "", err.Error()))
		}
	}
	mf, data, err := ReadFile(mainPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		c = &Config{pos: positions{}}
	case err != nil:
		return nil, nil, fmt.Errorf("reading configuration: %w", err)
	default:
		files = append(files, mf)
		var perr error
		c, perr = ParseMain(mainPath, data)
		if c == nil {
			c = &Config{pos: positions{}}
		}
		add(perr)
	}
	c.src = mainPath
	c.Farms = []Farm{}
	list, err := FarmFiles(dir)
	if err != nil {
		return nil, nil, err
	}
	if lim := c.Limits.WithDefaults(); len(list) > lim.MaxFarms {
		problems = append(problems, ProblemAt(filepath.Join(dir, FarmsDir), 0, "farms",
			fmt.Sprintf("%d farm files: more than limits.max_farms (%d)", len(list), lim.MaxFarms)))
		list = list[:lim.MaxFarms]
	}
	byName := map[string]string{}
	for _, lf := range list {
		file, data, err := ReadFile(lf.Path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return nil, nil, fmt.Errorf("reading configuration: %w", err)
		}
		files = append(files, file)
		f, err := parseFarmFile(file.Path, data, c.Limits)
		add(err)
		if f.Name == "" {
			continue
		}
		if other, dup := byName[f.Name]; dup {
			problems = append(problems, ProblemAt(file.Path, 0, "farms["+f.Name+"]",
				fmt.Sprintf("farm %q is in two files (also %s)", f.Name, other)))
			continue
		}
		byName[f.Name] = file.Path
		c.Farms = append(c.Farms, f)
	}
	return c, files, newError(problems)
}
