//go:build !linux

package health

import (
	"context"
	"fmt"
	"net"
	"runtime"
)

// NetNSDialer returns a DialFunc that fails: network namespaces exist on
// Linux only.
func NetNSDialer(int) DialFunc {
	return func(context.Context, string, string) (net.Conn, error) {
		return nil, fmt.Errorf("network namespaces are not supported on %s/%s", runtime.GOOS, runtime.GOARCH)
	}
}
