package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// DefaultRunDir is where the instance locks are, unless Options.RunDir
// says otherwise.
const DefaultRunDir = "/run/l4nft"

// ErrLocked: another agent manages the same table in the same network
// namespace.
var ErrLocked = errors.New("another agent manages this table")

// instanceLock is the exclusive lock an agent holds on its namespace and
// table for its whole life: two agents applying different files to one
// table would undo each other's changes.
type instanceLock struct{ f *os.File }

// lockName is the lock file's name for the namespace nsFile (nil: the
// agent's own) and table. The namespace is named by its inode, so that one
// namespace reached under two names still gives one lock.
func lockName(nsFile *os.File, table string) (string, error) {
	var st unix.Stat_t
	var err error
	if nsFile != nil {
		err = unix.Fstat(int(nsFile.Fd()), &st)
	} else {
		err = unix.Stat("/proc/thread-self/ns/net", &st)
	}
	if err != nil {
		return "", fmt.Errorf("identifying the network namespace: %w", err)
	}
	var b strings.Builder
	for _, r := range table {
		if r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, "%%%02x", r)
		}
	}
	return fmt.Sprintf("netns-%d-%d.table-%s.lock", st.Dev, st.Ino, b.String()), nil
}

// acquireLock takes the lock of nsFile's namespace and table in dir,
// without waiting: if another agent holds it, the error says which
// (errors.Is ErrLocked). where describes the namespace for messages.
func acquireLock(dir string, nsFile *os.File, table, where string) (*instanceLock, error) {
	name, err := lockName(nsFile, table)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the run directory: %w", err)
	}
	path := filepath.Join(dir, name)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the instance lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := "another process"
		if b, rerr := os.ReadFile(path); rerr == nil {
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
				holder = "the agent with pid " + strconv.Itoa(pid)
			}
		}
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s already manages table inet %s in %s (lock %s); refusing to start", ErrLocked, holder, table, where, path)
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	// The holder's pid, for the message above; best effort.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &instanceLock{f: f}, nil
}

// release gives the lock up. The file stays: removing it would let a
// third agent lock a new file while a second still waits on the old one.
func (l *instanceLock) release() error {
	if l == nil {
		return nil
	}
	return l.f.Close()
}
