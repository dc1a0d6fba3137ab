package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"github.com/l4nft/l4nft/agent/config"
)

// DefaultMaxFileSize is the largest configuration file read, unless
// Options.MaxFileSize says otherwise.
const DefaultMaxFileSize = 64 << 20

// ErrNotRegular: a configuration path is not a regular file (a named
// pipe, a device, a socket, a directory where a file is expected).
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge: a configuration file is larger than Options.MaxFileSize.
var ErrTooLarge = errors.New("file too large")

// checkFile fails unless fi, the file at path after symbolic links, is a
// regular file of at most max bytes.
func checkFile(path string, fi fs.FileInfo, max int64) error {
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, kind(fi.Mode()))
	}
	if fi.Size() > max {
		return fmt.Errorf("%s: %w: %d bytes, the limit is %d", path, ErrTooLarge, fi.Size(), max)
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m.IsDir():
		return "a directory"
	}
	return "mode " + m.String()
}

// statFile checks the file at path like readConfigFile, without reading it.
func statFile(path string, max int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkFile(path, fi, max)
}

// readConfigFile reads a configuration file: a regular file only (a symbolic
// link is followed and its target checked), of at most max bytes. It
// never blocks: a named pipe is opened without waiting for a writer and
// refused, and a device is refused before it is opened. What it returns
// is what config.ReadFile would.
func readConfigFile(path string, max int64) (config.File, []byte, error) {
	if err := statFile(path, max); err != nil {
		return config.File{}, nil, err
	}
	// Checked again on the descriptor: the path may have been replaced
	// meanwhile.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_NOCTTY, 0)
	if err != nil {
		return config.File{}, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return config.File{}, nil, err
	}
	if err := checkFile(path, fi, max); err != nil {
		return config.File{}, nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return config.File{}, nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(data)) > max {
		return config.File{}, nil, fmt.Errorf("%s: %w: more than %d bytes", path, ErrTooLarge, max)
	}
	return config.File{Path: path, Meta: fileMeta(fi), Sum: sha256.Sum256(data)}, data, nil
}
