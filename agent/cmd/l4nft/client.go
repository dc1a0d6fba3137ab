package main

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net/netip"
	"net/url"
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
	if err := safeToSend(addr, token); err != nil {
		return nil, err
	}
	return api.NewClient(addr, token, tc), nil
}

// safeToSend refuses to send a token where anyone on the path could read
// it: over plain http to a host that is not a loopback address.
func safeToSend(addr, token string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return usagef("--addr %q is not a URL: %v", addr, err)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
	default:
		return usagef("--addr %q: want an http:// or https:// URL, or HOST:PORT", addr)
	}
	if token == "" {
		return nil
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() || host == "localhost" {
		return nil
	}
	return fmt.Errorf("refusing to send the token over plain http to %s, which is not a loopback address: use https://%s (with --ca-file)", u.Host, u.Host)
}
