package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/l4nft/l4nft/integration/testbed"
)

// runIn runs a program inside ns with stdin as its input and returns how
// long it took from start to exit. The child is forked from a thread
// switched into ns (testbed's Namespace.Do), so it starts in ns without
// nsenter's extra exec, which would otherwise be charged to every timing.
func runIn(ctx context.Context, ns *testbed.Namespace, stdin string, name string, args ...string) (time.Duration, error) {
	var (
		elapsed time.Duration
		out     bytes.Buffer
	)
	err := ns.Do(func() error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		elapsed = time.Since(start)
		return err
	})
	if err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		return elapsed, fmt.Errorf("%s: running %s %s: %w: %s", ns.Name(), name, strings.Join(args, " "), err, msg)
	}
	return elapsed, nil
}

// flushConntrack deletes every conntrack entry of ns, so that each
// measurement starts from an empty table.
func flushConntrack(ns *testbed.Namespace) error {
	c, err := conntrack.Dial(&netlink.Config{NetNS: ns.Fd()})
	if err != nil {
		return fmt.Errorf("%s: connecting to conntrack: %w", ns.Name(), err)
	}
	defer c.Close()
	if err := c.Flush(); err != nil {
		return fmt.Errorf("%s: flushing conntrack: %w", ns.Name(), err)
	}
	return nil
}
