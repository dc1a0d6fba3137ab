//go:build !linux

package netlab

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

const (
	ifaFlagNoDAD = 0x02
	netlinkRoute = 0
)

func newNetNS(string) (netns.NsHandle, error) {
	return netns.None(), fmt.Errorf("network namespaces are not supported on %s/%s", runtime.GOOS, runtime.GOARCH)
}

func removeBindMount(string) error { return nil }
