package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/l4nft/l4nft/agent/config"
)

func validateCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	quiet := fs.Bool("q", false, "print nothing when the file is valid")
	return func(ctx context.Context, e *env, args []string) error {
		file, err := oneArg(args, "FILE")
		if err != nil {
			return err
		}
		c, err := config.Load(file)
		if err != nil {
			printError(e.stdout, "l4nft validate", err)
			return exitError{1}
		}
		if !*quiet {
			backends := 0
			for _, f := range c.Farms {
				backends += len(f.Backends)
			}
			fmt.Fprintf(e.stdout, "%s: valid (%d farms, %d backends)\n", file, len(c.Farms), backends)
		}
		return nil
	}
}
