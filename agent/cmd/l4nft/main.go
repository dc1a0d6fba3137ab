// Command l4nft is the l4nft agent and its command-line client: it keeps an
// nftables layer-4 load balancer matching a configuration file, serves an
// HTTP API to change it, and shows what runs.
//
// Run "l4nft help" for the commands, "l4nft COMMAND -help" for each one.
// New here? Run "sudo l4nft demo".
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), newEnv(), os.Args[1:]))
}
