package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/l4nft/l4nft/agent/api"
	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/agent/metrics"
)

func runCmd(fs *flag.FlagSet) func(context.Context, *env, []string) error {
	cfgPath := fs.String("config", "", "configuration file (YAML or JSON), or configuration directory (main file l4nft.yaml and farms.d/NAME.yaml); required")
	netns := fs.String("netns", "", "act inside the named network namespace (as in `ip netns`)")
	socket := fs.String("socket", "", "API unix socket (default: the file's api.socket, else "+config.DefaultSocket+")")
	cleanup := fs.Bool("cleanup-on-exit", false, "remove the agent's table on SIGTERM/SIGINT (default: leave the data plane running)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	watch := fs.Duration("watch-interval", daemon.DefaultWatchInterval, "how often to check the file for changes (negative: only on SIGHUP)")
	resync := fs.Duration("resync-interval", daemon.DefaultResyncInterval, "how often to re-read the kernel and repair drift (negative: only on SIGHUP)")
	runDir := fs.String("run-dir", daemon.DefaultRunDir, "directory of the instance locks (one agent per namespace and table)")
	maxSize := fs.Int64("max-config-size", daemon.DefaultMaxFileSize, "largest configuration file read, in bytes")
	return func(ctx context.Context, e *env, args []string) error {
		if len(args) > 0 {
			return usagef("unexpected arguments %q", args)
		}
		if *cfgPath == "" {
			return usagef("--config is required")
		}
		log, err := newLogger(e.stderr, *logFormat, *logLevel)
		if err != nil {
			return err
		}
		return runAgent(ctx, e, log, agentOptions{config: *cfgPath, netns: *netns, socket: *socket,
			cleanup: *cleanup, watch: *watch, resync: *resync, runDir: *runDir, maxSize: *maxSize})
	}
}

type agentOptions struct {
	config, netns, socket, runDir string
	cleanup                       bool
	watch, resync                 time.Duration
	maxSize                       int64
}

func runAgent(ctx context.Context, e *env, log *slog.Logger, o agentOptions) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	e.notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer e.stop(sigs)
	reload := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-sigs:
				if s == syscall.SIGHUP {
					select {
					case reload <- struct{}{}:
					default:
					}
					continue
				}
				log.Info("stopping", "signal", s.String())
				cancel()
				return
			}
		}
	}()

	m := metrics.New()
	// The API is checked and bound before the daemon touches the kernel.
	var lis *apiListeners
	d, err := daemon.New(ctx, daemon.Options{ConfigPath: o.config, NetNS: o.netns, Logger: log, Observer: m,
		WatchInterval: o.watch, ResyncInterval: o.resync, RunDir: o.runDir, MaxFileSize: o.maxSize,
		Prepare: func(cfg *config.Config) (err error) {
			lis, err = listenAPI(cfg, o)
			return err
		}})
	if err != nil {
		lis.close()
		return err
	}
	m.SetStatus(d.Status)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := m.Register(reg); err != nil {
		d.Close(ctx, false)
		return err
	}
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)})

	servers := lis.serve(d, log, metricsHandler)
	log.Info("agent running", "config", o.config, "table", d.Config().TableName(), "netns", o.netns)

	d.Run(ctx, reload)

	shut, cancelShut := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShut()
	for _, s := range servers {
		s.Shutdown(shut)
	}
	if err := d.Close(shut, o.cleanup); err != nil {
		return fmt.Errorf("stopping: %w", err)
	}
	if o.cleanup {
		log.Info("agent stopped; table removed (--cleanup-on-exit)")
	} else {
		log.Info("agent stopped; the data plane keeps running")
	}
	return nil
}

// apiListeners are the API's listeners, bound but not yet served.
type apiListeners struct {
	unix, tcp net.Listener
	socket    string
	token     string
	tls       bool
}

// listenAPI checks the API's settings (token file, TLS files, addresses)
// and binds its listeners: the unix socket and, if configured, TCP.
func listenAPI(cfg *config.Config, o agentOptions) (*apiListeners, error) {
	lis := &apiListeners{socket: o.socket}
	if lis.socket == "" {
		lis.socket = cfg.SocketPath()
	}
	a := cfg.API
	var tlsConfig *tls.Config
	if a.Listen != "" {
		if a.TokenFile == "" {
			return nil, errors.New("api.listen requires api.token_file: refusing to serve the API on TCP without a token")
		}
		raw, err := os.ReadFile(a.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading api.token_file: %w", err)
		}
		lis.token = strings.TrimSpace(string(raw))
		if lis.token == "" {
			return nil, fmt.Errorf("api.token_file %s is empty: refusing to serve the API on TCP without a token", a.TokenFile)
		}
		lis.tls = a.TLSCert != ""
		if !lis.tls && !isLoopback(a.Listen) {
			return nil, fmt.Errorf("api.listen %s is not a loopback address: api.tls_cert and api.tls_key are required", a.Listen)
		}
		if lis.tls {
			cert, err := tls.LoadX509KeyPair(a.TLSCert, a.TLSKey)
			if err != nil {
				return nil, fmt.Errorf("loading api.tls_cert/tls_key: %w", err)
			}
			tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		if lis.tcp, err = net.Listen("tcp", a.Listen); err != nil {
			return nil, fmt.Errorf("api.listen: %w", err)
		}
		if lis.tls {
			lis.tcp = tls.NewListener(lis.tcp, tlsConfig)
		}
	}
	ul, err := api.ListenUnix(lis.socket)
	if err != nil {
		lis.close()
		return nil, err
	}
	lis.unix = ul
	return lis, nil
}

// close closes the listeners of an API that will not be served.
func (lis *apiListeners) close() {
	if lis == nil {
		return
	}
	if lis.tcp != nil {
		lis.tcp.Close()
	}
	if lis.unix != nil {
		lis.unix.Close()
	}
}

// serve serves the API on the listeners.
func (lis *apiListeners) serve(d *daemon.Daemon, log *slog.Logger, metricsHandler http.Handler) []*http.Server {
	limits := d.Config().Limits
	newServer := func(token string) *http.Server {
		h := api.NewHandler(api.Options{Service: d, Metrics: metricsHandler, Token: token, Logger: log, Limits: limits})
		return &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
			WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
			ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	}
	us := newServer("")
	go us.Serve(api.LimitListener(lis.unix, api.DefaultMaxConns))
	servers := []*http.Server{us}
	log.Info("api listening", "socket", lis.socket)
	if lis.tcp != nil {
		ts := newServer(lis.token)
		go ts.Serve(api.LimitListener(lis.tcp, api.DefaultMaxConns))
		log.Info("api listening", "address", lis.tcp.Addr().String(), "tls", lis.tls)
		servers = append(servers, ts)
	}
	return servers
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
