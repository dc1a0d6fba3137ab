package daemon

import (
	"os"
	"path/filepath"
	"strings"
)

// InstanceLock is the exclusive lock of one namespace and table, which
// the daemon holds for its life and `l4nft apply` for its run: two
// programs applying different configurations to one table would undo
// each other's changes.
type InstanceLock struct{ l *instanceLock }

// LockInstance takes the lock of nsFile's namespace (nil: the caller's
// own) and table in dir (DefaultRunDir if empty), without waiting; if
// another holds it, the error says who (errors.Is ErrLocked). where
// describes the namespace for messages.
func LockInstance(dir string, nsFile *os.File, table, where string) (*InstanceLock, error) {
	if dir == "" {
		dir = DefaultRunDir
	}
	l, err := acquireLock(dir, nsFile, table, where)
	if err != nil {
		return nil, err
	}
	return &InstanceLock{l}, nil
}

// Release gives the lock up.
func (l *InstanceLock) Release() error {
	if l == nil {
		return nil
	}
	return l.l.release()
}

// StateFile is where the balancer of nsFile's namespace and table keeps
// its lb.Options.StateFile, beside the instance lock in dir
// (DefaultRunDir if empty): whoever holds the lock reads and writes it.
func StateFile(dir string, nsFile *os.File, table string) (string, error) {
	if dir == "" {
		dir = DefaultRunDir
	}
	name, err := lockName(nsFile, table)
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, strings.TrimSuffix(name, ".lock")+".state"), nil
}
