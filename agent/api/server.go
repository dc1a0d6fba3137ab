package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/l4nft/l4nft/agent/config"
	"github.com/l4nft/l4nft/agent/daemon"
	"github.com/l4nft/l4nft/lb"
)

// DefaultMaxBody is the largest request body accepted by default.
const DefaultMaxBody = 1 << 20

// Service is what the API serves; *daemon.Daemon implements it.
type Service interface {
	Farms() []config.Farm
	Farm(name string) (config.Farm, error)
	CreateFarm(ctx context.Context, f config.Farm) error
	PutFarm(ctx context.Context, f config.Farm) (created bool, err error)
	DeleteFarm(ctx context.Context, name string) error
	SetBackend(ctx context.Context, farm, backend string, ch daemon.BackendChange) (config.Backend, error)
	Status(ctx context.Context) (daemon.Status, error)
	Reload(ctx context.Context) error
	Render() string
	Healthz() error
}

// Options configure NewHandler.
type Options struct {
	Service Service
	// Metrics serves /metrics; nil means 404.
	Metrics http.Handler
	// Token, if not empty, is required as "Authorization: Bearer Token" on
	// every endpoint but /healthz.
	Token string
	// MaxBody limits request bodies; default DefaultMaxBody.
	MaxBody int64
	// Logger receives a line per failed request; default discard.
	Logger *slog.Logger
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error    string           `json:"error"`
	Problems []config.Problem `json:"problems,omitempty"`
}

type server struct {
	Options
	tokenSum [32]byte
}

// NewHandler returns the API's handler.
func NewHandler(opts Options) http.Handler {
	if opts.MaxBody <= 0 {
		opts.MaxBody = DefaultMaxBody
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &server{Options: opts, tokenSum: sha256.Sum256([]byte(opts.Token))}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", opts.Metrics)
	}
	mux.HandleFunc("GET /v1/status", s.status)
	mux.HandleFunc("GET /v1/ruleset", s.ruleset)
	mux.HandleFunc("POST /v1/reload", s.reload)
	mux.HandleFunc("GET /v1/farms", s.listFarms)
	mux.HandleFunc("POST /v1/farms", s.createFarm)
	mux.HandleFunc("GET /v1/farms/{farm}", s.getFarm)
	mux.HandleFunc("PUT /v1/farms/{farm}", s.putFarm)
	mux.HandleFunc("DELETE /v1/farms/{farm}", s.deleteFarm)
	mux.HandleFunc("GET /v1/farms/{farm}/backends/{backend}", s.getBackend)
	mux.HandleFunc("PATCH /v1/farms/{farm}/backends/{backend}", s.patchBackend)
	return s.recover(s.auth(mux))
}

// auth requires the token, if any, on every path but /healthz.
func (s *server) auth(next http.Handler) http.Handler {
	if s.Token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			// Comparing fixed-length digests keeps the comparison constant
			// time whatever the lengths.
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], s.tokenSum[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="l4nft"`)
				s.fail(w, r, http.StatusUnauthorized, errors.New("missing or wrong bearer token"))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// recover turns a panic into a 500 rather than a dropped connection.
func (s *server) recover(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.Logger.Error("api handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v)
				s.fail(w, r, http.StatusInternalServerError, fmt.Errorf("internal error: %v", v))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (s *server) fail(w http.ResponseWriter, r *http.Request, code int, err error) {
	body := ErrorBody{Error: err.Error()}
	var ce *config.Error
	if errors.As(err, &ce) {
		body.Problems = ce.Problems
		body.Error = fmt.Sprintf("invalid configuration (%d problems)", len(ce.Problems))
	}
	if code >= 500 {
		s.Logger.Error("api request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	} else {
		s.Logger.Debug("api request refused", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	writeJSON(w, code, body)
}

// failService maps the service's errors to status codes.
func (s *server) failService(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, daemon.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, daemon.ErrExists), errors.Is(err, daemon.ErrConflict):
		code = http.StatusConflict
	case errors.Is(err, lb.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, context.Canceled):
		code = http.StatusServiceUnavailable
	}
	s.fail(w, r, code, err)
}

// body reads a size-limited request body.
func (s *server) body(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.MaxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("request body larger than %d bytes", tooBig.Limit))
		return nil, false
	case err != nil:
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
		return nil, false
	case len(strings.TrimSpace(string(data))) == 0:
		s.fail(w, r, http.StatusBadRequest, errors.New("empty request body"))
		return nil, false
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("malformed JSON: %w", err))
		return nil, false
	}
	return data, true
}

// farmBody parses a farm from the request body.
func (s *server) farmBody(w http.ResponseWriter, r *http.Request) (config.Farm, bool) {
	data, ok := s.body(w, r)
	if !ok {
		return config.Farm{}, false
	}
	f, err := config.ParseFarm("request body", data)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return config.Farm{}, false
	}
	return f, true
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if err := s.Service.Healthz(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, err)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	st, err := s.Service.Status(r.Context())
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *server) ruleset(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, s.Service.Render())
}

func (s *server) reload(w http.ResponseWriter, r *http.Request) {
	if err := s.Service.Reload(r.Context()); err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"result": "reloaded"})
}

func (s *server) listFarms(w http.ResponseWriter, r *http.Request) {
	farms := s.Service.Farms()
	if farms == nil {
		farms = []config.Farm{}
	}
	writeJSON(w, http.StatusOK, farms)
}

func (s *server) getFarm(w http.ResponseWriter, r *http.Request) {
	f, err := s.Service.Farm(r.PathValue("farm"))
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, f)
}

func (s *server) createFarm(w http.ResponseWriter, r *http.Request) {
	f, ok := s.farmBody(w, r)
	if !ok {
		return
	}
	if err := s.Service.CreateFarm(r.Context(), f); err != nil {
		s.failService(w, r, err)
		return
	}
	w.Header().Set("Location", "/v1/farms/"+f.Name)
	s.writeFarm(w, r, http.StatusCreated, f.Name)
}

func (s *server) putFarm(w http.ResponseWriter, r *http.Request) {
	f, ok := s.farmBody(w, r)
	if !ok {
		return
	}
	name := r.PathValue("farm")
	if f.Name == "" {
		f.Name = name
	}
	if f.Name != name {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("the body names farm %q but the path %q", f.Name, name))
		return
	}
	created, err := s.Service.PutFarm(r.Context(), f)
	if err != nil {
		s.failService(w, r, err)
		return
	}
	code := http.StatusOK
	if created {
		code = http.StatusCreated
	}
	s.writeFarm(w, r, code, name)
}

// writeFarm answers with the farm as now configured.
func (s *server) writeFarm(w http.ResponseWriter, r *http.Request, code int, name string) {
	f, err := s.Service.Farm(name)
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, code, f)
}

func (s *server) deleteFarm(w http.ResponseWriter, r *http.Request) {
	if err := s.Service.DeleteFarm(r.Context(), r.PathValue("farm")); err != nil {
		s.failService(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) getBackend(w http.ResponseWriter, r *http.Request) {
	f, err := s.Service.Farm(r.PathValue("farm"))
	if err != nil {
		s.failService(w, r, err)
		return
	}
	for _, b := range f.Backends {
		if b.Name == r.PathValue("backend") {
			writeJSON(w, http.StatusOK, b)
			return
		}
	}
	s.fail(w, r, http.StatusNotFound, fmt.Errorf("backend %q of farm %q: %w", r.PathValue("backend"), f.Name, daemon.ErrNotFound))
}

func (s *server) patchBackend(w http.ResponseWriter, r *http.Request) {
	data, ok := s.body(w, r)
	if !ok {
		return
	}
	var ch daemon.BackendChange
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("malformed backend change: %w", err))
		return
	}
	if ch.Weight == nil && ch.State == nil {
		s.fail(w, r, http.StatusBadRequest, errors.New(`nothing to change: want "weight" and/or "state"`))
		return
	}
	b, err := s.Service.SetBackend(r.Context(), r.PathValue("farm"), r.PathValue("backend"), ch)
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}
