package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/l4nft/l4nft/agent/api"
	"github.com/l4nft/l4nft/agent/config"
)

// clientFlags select the running agent to talk to.
type clientFlags struct {
	socket, addr, tokenFile, caFile *string
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		socket:    fs.String("socket", "", "the agent's unix socket (default $L4NFT_SOCKET, else "+config.DefaultSocket+")"),
		addr:      fs.String("addr", "", "the agent's TCP API instead, such as https://10.0.0.1:9100 (default $L4NFT_ADDR)"),
		tokenFile: fs.String("token-file", "", "file holding the bearer token for --addr (default: $L4NFT_TOKEN)"),
		caFile:    fs.String("ca-file", "", "PEM certificates to verify the agent's TLS certificate with"),
	}
}

func (c clientFlags) client(e *env) (*api.Client, error) {
	addr := *c.addr
	if addr == "" {
		addr = e.getenv("L4NFT_ADDR")
	}
	if addr == "" {
		socket := *c.socket
		if socket == "" {
			socket = e.getenv("L4NFT_SOCKET")
		}
		if socket == "" {
			socket = config.DefaultSocket
		}
		return api.NewUnixClient(socket), nil
	}
	token := e.getenv("L4NFT_TOKEN")
	if *c.tokenFile != "" {
		b, err := os.ReadFile(*c.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading the token: %w", err)
		}
		token = strings.TrimSpace(string(b))
	}
	var tc *tls.Config
	if *c.caFile != "" {
		pem, err := os.ReadFile(*c.caFile)
		if err != nil {
			return nil, fmt.Errorf("reading --ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca-file %s holds no PEM certificate", *c.caFile)
		}
		tc = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return api.NewClient(addr, token, tc), nil
}
