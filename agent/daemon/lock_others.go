//go:build !linux

package daemon

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

// DefaultRunDir is where the instance locks are, unless Options.RunDir
// says otherwise.
const DefaultRunDir = "/run/l4nft"

// ErrLocked: another agent manages the same table in the same network
// namespace.
var ErrLocked = errors.New("another agent manages this table")

type instanceLock struct{}

func acquireLock(string, *os.File, string, string) (*instanceLock, error) {
	return nil, fmt.Errorf("instance lock: not supported on %s/%s", runtime.GOOS, runtime.GOARCH)
}

func (l *instanceLock) release() error { return nil }
