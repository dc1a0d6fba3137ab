package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/l4nft/l4nft/agent/config"
)

// checkCmd is `l4nft check`: keepalived's track_script (or any monitor)
// asks whether this node can balance. It exits 0 when the agent answers
// GET /healthz with 200, that is when it runs and the kernel matches its
// configuration; otherwise it prints one line saying why and exits 1.
func checkCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	socket := fs.String("socket", "", "the agent's unix socket (default $L4NFT_SOCKET, else "+config.DefaultSocket+")")
	addr := fs.String("addr", "", "the agent's TCP API instead, such as https://10.0.0.1:9100 (default $L4NFT_ADDR)")
	caFile := fs.String("ca-file", "", "PEM certificates to verify the agent's TLS certificate with")
	timeout := fs.Duration("timeout", 2*time.Second, "give up and fail after this long")
	quiet := fs.Bool("quiet", false, "print nothing when healthy")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected arguments %q", args)
		}
		if *timeout <= 0 {
			return usagef("invalid --timeout %v (want > 0)", *timeout)
		}
		ctx, cancel := context.WithTimeout(ctx, *timeout)
		defer cancel()
		where, err := checkHealth(ctx, e, *socket, *addr, *caFile)
		if err != nil {
			fmt.Fprintf(e.stdout, "FAIL: %v\n", err)
			return exitError{1}
		}
		if !*quiet {
			fmt.Fprintf(e.stdout, "OK: the agent on %s runs and the kernel matches its configuration\n", where)
		}
		return nil
	}
}

// checkHealth asks the agent's /healthz and returns where it asked.
func checkHealth(ctx context.Context, e *env, socket, addr, caFile string) (string, error) {
	if addr == "" {
		addr = e.getenv("L4NFT_ADDR")
	}
	var (
		where string
		base  string
		tr    = &http.Transport{DisableKeepAlives: true}
	)
	if addr == "" {
		if socket == "" {
			socket = e.getenv("L4NFT_SOCKET")
		}
		if socket == "" {
			socket = config.DefaultSocket
		}
		where, base = socket, "http://l4nft"
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}
	} else {
		if !strings.Contains(addr, "://") {
			addr = "http://" + addr
		}
		where, base = addr, strings.TrimSuffix(addr, "/")
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return where, fmt.Errorf("reading --ca-file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return where, fmt.Errorf("--ca-file %s holds no PEM certificate", caFile)
			}
			tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return where, fmt.Errorf("invalid agent address %q: %w", addr, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
			return where, fmt.Errorf("the agent is not running (nothing listens on %s)", where)
		case ctx.Err() != nil:
			return where, fmt.Errorf("the agent on %s did not answer in time", where)
		}
		return where, fmt.Errorf("cannot reach the agent on %s: %v", where, unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	reason := strings.Join(strings.Fields(string(body)), " ")
	switch {
	case resp.StatusCode == http.StatusOK:
		return where, nil
	case resp.StatusCode == http.StatusServiceUnavailable:
		return where, fmt.Errorf("the kernel does not match the agent's configuration: %s", reason)
	default:
		return where, fmt.Errorf("the agent on %s answered HTTP %d: %s", where, resp.StatusCode, reason)
	}
}

func unwrapURLError(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}
