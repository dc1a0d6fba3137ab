package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/lb"
	"github.com/l4nft/l4nft/nft"
)

// diffCmd is `l4nft diff`: the plan of an apply, with the exit status of
// diff(1), `kubectl diff` and `terraform plan -detailed-exitcode`: 0 when
// the kernel already matches, 1 when applying would change it, 2 on error.
func diffCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	netns := fs.String("netns", "", "compare with the kernel inside the named network namespace (as in `ip netns`)")
	return func(ctx context.Context, e *env, args []string) error {
		file, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		p, _, err := planFile(ctx, file, *netns)
		if err != nil {
			printError(e.stderr, "l4nft diff", err)
			return exitError{2}
		}
		if p.Empty() {
			return nil
		}
		printPlan(e.stdout, p)
		return exitError{1}
	}
}

// planFile loads the configuration at file and works out what applying
// it in the namespace netns ("" for the current one) would send, without
// sending anything.
func planFile(ctx context.Context, file, netns string) (*lb.Plan, *config.Config, error) {
	c, err := config.Load(file)
	if err != nil {
		return nil, nil, err
	}
	opts := c.LBOptions()
	if netns != "" {
		opts.NetNS = nft.NetNSName(netns)
	}
	b, err := lb.Open(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	defer b.Close()
	p, err := b.Plan(ctx, c.State())
	return p, c, err
}

// printPlan prints a plan: a summary as nft comments, then the elements
// that would change in nft syntax.
func printPlan(w io.Writer, p *lb.Plan) {
	if p.Empty() {
		fmt.Fprintln(w, "# no changes: the kernel already matches")
		return
	}
	list := func(what string, names []string) {
		if len(names) > 0 {
			fmt.Fprintf(w, "# farms %s: %s\n", what, strings.Join(names, ", "))
		}
	}
	list("added", p.Added)
	list("changed", p.Changed)
	list("removed", p.Removed)
	if p.Rebuild {
		fmt.Fprintln(w, "# the table would be (re)built whole")
	}
	text := p.String()
	fmt.Fprint(w, text)
	if text != "" && !strings.HasSuffix(text, "\n") {
		fmt.Fprintln(w)
	}
}
