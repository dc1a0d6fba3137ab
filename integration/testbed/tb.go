package testbed

import (
	"context"
	"strings"
	"time"
)

// TB is the part of testing.TB that ForTest needs, so that this package does
// not import testing.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// ForTest builds a topology with New for a test, fails the test if that
// fails, and closes it when the test ends. Callers skip the test themselves
// when not running as root.
func ForTest(tb TB, opts Options) *Topology {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t, err := New(ctx, opts)
	if err != nil {
		tb.Fatalf("failed to build test bed: %v", err)
	}
	tb.Cleanup(func() {
		if err := t.Close(); err != nil {
			tb.Errorf("failed to tear down test bed %s: %v", t.ID, err)
		}
	})
	if opts.Named {
		var names []string
		for _, n := range t.Namespaces() {
			names = append(names, n.NetnsName())
		}
		tb.Logf("test bed %s: namespaces %s", t.ID, strings.Join(names, " "))
	}
	return t
}

// NamespaceForTest creates an unnamed namespace (see NewNamespace) for a test
// and closes it when the test ends.
func NamespaceForTest(tb TB, name string) *Namespace {
	tb.Helper()
	n, err := NewNamespace(name, "")
	if err != nil {
		tb.Fatalf("failed to create namespace: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("failed to close namespace %s: %v", name, err)
		}
	})
	return n
}
