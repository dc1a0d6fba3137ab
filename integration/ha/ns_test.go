package ha

import (
	"testing"

	"github.com/l4nft/l4nft/agent/netlab"
)

// netNS is a network namespace kept alive by a file descriptor, from
// agent/netlab; this file is the package's only tie to it.
type netNS = netlab.Namespace

// mustNamespace creates an unnamed network namespace for the test and
// closes it when the test ends.
func mustNamespace(t *testing.T, name string) *netNS {
	t.Helper()
	n, err := netlab.NewNamespace(name, "")
	if err != nil {
		t.Fatalf("failed to create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("failed to close namespace %s: %v", name, err)
		}
	})
	return n
}
