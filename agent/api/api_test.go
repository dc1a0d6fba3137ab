package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

// fakeService keeps farms in memory and validates like the daemon.
type fakeService struct {
	mu    sync.Mutex
	farms []config.Farm
	panic bool
}

func (s *fakeService) Farms() []config.Farm {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]config.Farm(nil), s.farms...)
}

func (s *fakeService) Farm(name string) (config.Farm, error) {
	for _, f := range s.Farms() {
		if f.Name == name {
			return f, nil
		}
	}
	return config.Farm{}, fmt.Errorf("farm %q: %w", name, daemon.ErrNotFound)
}

func (s *fakeService) validate(farms []config.Farm) error {
	c, err := config.ParseAndValidate("mem", []byte("farms: []\n"))
	if err != nil {
		return err
	}
	c.Farms = farms
	return config.Validate(c)
}

func (s *fakeService) CreateFarm(ctx context.Context, f config.Farm) error {
	if _, err := s.Farm(f.Name); err == nil {
		return daemon.ErrExists
	}
	_, err := s.PutFarm(ctx, f)
	return err
}

func (s *fakeService) PutFarm(_ context.Context, f config.Farm) (bool, error) {
	if s.panic {
		panic("boom")
	}
	next := s.Farms()
	created := true
	for i := range next {
		if next[i].Name == f.Name {
			next[i], created = f, false
		}
	}
	if created {
		next = append(next, f)
	}
	if err := s.validate(next); err != nil {
		return false, err
	}
	s.mu.Lock()
	s.farms = next
	s.mu.Unlock()
	return created, nil
}

func (s *fakeService) DeleteFarm(_ context.Context, name string) error {
	if _, err := s.Farm(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var keep []config.Farm
	for _, f := range s.farms {
		if f.Name != name {
			keep = append(keep, f)
		}
	}
	s.farms = keep
	return nil
}

func (s *fakeService) SetBackend(_ context.Context, farm, backend string, ch daemon.BackendChange) (config.Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.farms {
		for j := range s.farms[i].Backends {
			b := &s.farms[i].Backends[j]
			if s.farms[i].Name == farm && b.Name == backend {
				if ch.Weight != nil {
					b.Weight = *ch.Weight
				}
				if ch.State != nil {
					b.State = *ch.State
				}
				return *b, nil
			}
		}
	}
	return config.Backend{}, daemon.ErrNotFound
}

func (s *fakeService) Status(context.Context) (daemon.Status, error) {
	return daemon.Status{Table: "l4nft"}, nil
}
func (s *fakeService) Reload(context.Context) error { return errors.New("no file") }
func (s *fakeService) Render() string               { return "table inet l4nft {}\n" }
func (s *fakeService) Healthz() error               { return nil }

// DryRun plans a change as the daemon does, against the farms in memory:
// any difference is one farm changed, added or removed.
func (s *fakeService) DryRun(_ context.Context, name string, build func(*config.Farm) (*config.Farm, error)) (*lb.Plan, error) {
	var cur *config.Farm
	if f, err := s.Farm(name); err == nil {
		cur = &f
	}
	next, err := build(cur)
	if err != nil {
		return nil, err
	}
	p := &lb.Plan{}
	switch {
	case cur == nil && next != nil:
		p.Added = []string{name}
	case cur != nil && next == nil:
		p.Removed = []string{name}
	case cur != nil && !cur.Equal(next):
		p.Changed = []string{name}
	default:
		return p, nil
	}
	p.Transactions, p.Messages, p.Elements = 1, 3, 1
	return p, nil
}

const webFarm = `{"name": "web", "address": "198.51.100.250", "ports": ["80"],
  "backends": [{"name": "app0", "address": "203.0.113.10", "weight": 1}]}`

func mustServer(tb testing.TB, token string) (*httptest.Server, *fakeService) {
	tb.Helper()
	svc := &fakeService{}
	srv := httptest.NewServer(NewHandler(Options{Service: svc, Token: token, MaxBody: 4096,
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "l4nft_up 1") })}))
	tb.Cleanup(srv.Close)
	return srv, svc
}

func do(tb testing.TB, srv *httptest.Server, method, path, token, body string) (int, string) {
	tb.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		tb.Fatalf("failed to %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFarmLifecycle(t *testing.T) {
	srv, svc := mustServer(t, "")
	steps := []struct {
		method, path, body string
		want               int
		contains           string
	}{
		{"GET", "/v1/farms", "", 200, "[]"},
		{"POST", "/v1/farms", webFarm, 201, `"name": "web"`},
		{"POST", "/v1/farms", webFarm, 409, "already exists"},
		{"GET", "/v1/farms/web", "", 200, `"address": "198.51.100.250"`},
		{"GET", "/v1/farms/nope", "", 404, "not found"},
		{"PUT", "/v1/farms/web", strings.Replace(webFarm, `"weight": 1`, `"weight": 7`, 1), 200, `"weight": 7`},
		{"PUT", "/v1/farms/other", strings.Replace(webFarm, `"name": "web", "address": "198.51.100.250"`, `"address": "198.51.100.251"`, 1), 201, `"name": "other"`},
		{"PATCH", "/v1/farms/web/backends/app0", `{"state": "drain"}`, 200, `"state": "drain"`},
		{"GET", "/v1/farms/web/backends/app0", "", 200, `"state": "drain"`},
		{"GET", "/v1/farms/web/backends/app9", "", 404, "not found"},
		{"PATCH", "/v1/farms/web/backends/app9", `{"weight": 2}`, 404, "not found"},
		{"DELETE", "/v1/farms/other", "", 204, ""},
		{"DELETE", "/v1/farms/other", "", 404, "not found"},
		{"PUT", "/v1/farms/web", strings.Replace(webFarm, `"weight": 1`, `"weight": 0`, 1), 400, `"line": 2`},
		{"POST", "/v1/farms", strings.Replace(webFarm, `"name": "web"`, `"name": "web2"`, 1), 400, "already served by farm"},
		{"GET", "/v1/status", "", 200, `"table": "l4nft"`},
		{"GET", "/v1/ruleset", "", 200, "table inet l4nft"},
		{"POST", "/v1/reload", "", 500, "no file"},
		{"GET", "/healthz", "", 200, "ok"},
		{"GET", "/metrics", "", 200, "l4nft_up 1"},
		{"GET", "/nothing", "", 404, "not found"},
		{"POST", "/v1/status", "", 405, ""},
	}
	for _, s := range steps {
		code, body := do(t, srv, s.method, s.path, "", s.body)
		if code != s.want || !strings.Contains(body, s.contains) {
			t.Errorf("%s %s: %d %s; want %d containing %q", s.method, s.path, code, body, s.want, s.contains)
		}
	}
	if f, _ := svc.Farm("web"); f.Backends[0].Weight != 7 {
		t.Errorf("the rejected PUT changed the farm: %+v", f)
	}
}

func TestBadBodies(t *testing.T) {
	srv, _ := mustServer(t, "")
	for _, tc := range []struct{ name, method, path, body, want string }{
		{"oversized", "PUT", "/v1/farms/web", `{"name": "` + strings.Repeat("x", 5000) + `"}`, "larger than 4096 bytes"},
		{"malformed", "POST", "/v1/farms", `{"name": `, "malformed JSON"},
		{"empty", "POST", "/v1/farms", "  ", "empty request body"},
		{"not json", "POST", "/v1/farms", "name: web", "malformed JSON"},
		{"unknown field", "POST", "/v1/farms", `{"name": "web", "colour": 1}`, "unknown field"},
		{"wrong type", "POST", "/v1/farms", `{"name": "web", "ports": {"a": 1}}`, "ports"},
		{"bad change", "PATCH", "/v1/farms/web/backends/app0", `{"weight": "heavy"}`, `\"heavy\" is not a whole number`},
		{"two changes", "PATCH", "/v1/farms/web/backends/app0", `{"weight": 1}{"weight": 2}`, "malformed JSON"},
	} {
		code, body := do(t, srv, tc.method, tc.path, "", tc.body)
		if code != 400 || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s; want 400 mentioning %q", tc.name, code, body, tc.want)
		}
	}
}

func TestToken(t *testing.T) {
	srv, _ := mustServer(t, "tok")
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/v1/status", "", 401}, {"/v1/status", "tok2", 401}, {"/v1/status", "to", 401}, {"/metrics", "", 401},
		{"/v1/status", "tok", 200}, {"/metrics", "tok", 200}, {"/healthz", "", 200},
	} {
		code, body := do(t, srv, "GET", tc.path, tc.token, "")
		if code != tc.want {
			t.Errorf("GET %s with %q: %d %s, want %d", tc.path, tc.token, code, body, tc.want)
		}
	}
	// The client sends it.
	c := NewClient(srv.URL, "tok", nil)
	if _, err := c.Status(t.Context()); err != nil {
		t.Errorf("client with the token: %v", err)
	}
	var e *Error
	if _, err := NewClient(srv.URL, "bad", nil).Status(t.Context()); !errors.As(err, &e) || e.StatusCode != 401 {
		t.Errorf("client with a bad token: %v, want a 401 *Error", err)
	}
}

func TestPanicIs500(t *testing.T) {
	srv, svc := mustServer(t, "")
	svc.panic = true
	if code, body := do(t, srv, "PUT", "/v1/farms/web", "", webFarm); code != 500 || !strings.Contains(body, "internal error") {
		t.Errorf("panicking handler: %d %s, want 500", code, body)
	}
	if code, _ := do(t, srv, "GET", "/healthz", "", ""); code != 200 {
		t.Errorf("server dead after a panic: %d", code)
	}
}

func TestListenUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "l4nft.sock")
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, %v; want 0600", fi.Mode(), err)
	}
	srv := &http.Server{Handler: NewHandler(Options{Service: &fakeService{}})}
	go srv.Serve(l)
	if _, err := ListenUnix(path); err == nil || !strings.Contains(err.Error(), "another agent") {
		t.Errorf("second listener on a live socket: %v, want a refusal", err)
	}
	if _, err := NewUnixClient(path).Status(t.Context()); err != nil {
		t.Errorf("client over the socket: %v", err)
	}
	srv.Close()
	if _, err := os.Stat(path); err == nil {
		t.Errorf("socket file left after close")
	}
	// A stale socket (no one listening) is replaced.
	l2, err := ListenUnix(path)
	if err != nil {
		t.Fatalf("failed to listen again: %v", err)
	}
	l2.Close()
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenUnix(path); err == nil {
		t.Errorf("listening over a regular file succeeded")
	}
}

// LimitListener serves at most n connections at once; a closed one makes
// room for the next.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := LimitListener(inner, 1)
	defer l.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted while the first is open")
	case <-time.After(100 * time.Millisecond):
	}
	first.Close()
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("closing the first connection did not make room for the second")
	}
}
