package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
)

// Client talks to a running agent.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// NewUnixClient returns a client of the agent listening on the unix
// socket at path.
func NewUnixClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{base: "http://l4nft", http: &http.Client{Transport: tr, Timeout: time.Minute}}
}

// NewClient returns a client of the agent at baseURL (such as
// https://10.0.0.1:9100) sending token, with tlsConfig for https (nil for
// the system's roots).
func NewClient(baseURL, token string, tlsConfig *tls.Config) *Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	return &Client{base: strings.TrimSuffix(baseURL, "/"), token: token, http: &http.Client{Transport: tr, Timeout: time.Minute}}
}

// Error is an error response of the agent.
type Error struct {
	StatusCode int
	ErrorBody
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "agent: %s (HTTP %d)", e.ErrorBody.Error, e.StatusCode)
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// do sends a request with a JSON body (if in is not nil) and decodes the
// JSON answer into out (if not nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("connecting to the agent: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent's answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{StatusCode: resp.StatusCode}
		if json.Unmarshal(data, &e.ErrorBody) != nil || e.ErrorBody.Error == "" {
			e.ErrorBody.Error = strings.TrimSpace(string(data))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if s, ok := out.(*string); ok {
		*s = string(data)
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding the agent's answer: %w", err)
	}
	return nil
}

// Status returns the agent's status.
func (c *Client) Status(ctx context.Context) (daemon.Status, error) {
	var st daemon.Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Ruleset returns the installed ruleset in nft syntax.
func (c *Client) Ruleset(ctx context.Context) (string, error) {
	var s string
	err := c.do(ctx, http.MethodGet, "/v1/ruleset", nil, &s)
	return s, err
}

// Reload makes the agent reload its configuration file.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reload", nil, nil)
}

// Farms returns the configured farms.
func (c *Client) Farms(ctx context.Context) ([]config.Farm, error) {
	var fs []config.Farm
	err := c.do(ctx, http.MethodGet, "/v1/farms", nil, &fs)
	return fs, err
}

// Farm returns one farm.
func (c *Client) Farm(ctx context.Context, name string) (config.Farm, error) {
	var f config.Farm
	err := c.do(ctx, http.MethodGet, "/v1/farms/"+url.PathEscape(name), nil, &f)
	return f, err
}

// PutFarm creates or replaces a farm.
func (c *Client) PutFarm(ctx context.Context, f config.Farm) (config.Farm, error) {
	var out config.Farm
	err := c.do(ctx, http.MethodPut, "/v1/farms/"+url.PathEscape(f.Name), f, &out)
	return out, err
}

// DeleteFarm deletes a farm.
func (c *Client) DeleteFarm(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/farms/"+url.PathEscape(name), nil, nil)
}

// SetBackend changes one backend's weight and/or state.
func (c *Client) SetBackend(ctx context.Context, farm, backend string, ch daemon.BackendChange) (config.Backend, error) {
	var b config.Backend
	err := c.do(ctx, http.MethodPatch, "/v1/farms/"+url.PathEscape(farm)+"/backends/"+url.PathEscape(backend), ch, &b)
	return b, err
}

// IsNotFound reports whether err is the agent's 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == http.StatusNotFound
}
