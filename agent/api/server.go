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
	"slices"
	"strconv"
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
	// DryRun works out what a change of the farm named name would send:
	// build gets the farm in force (nil if none) and returns the farm
	// wanted (nil to delete it). Nothing is changed.
	DryRun(ctx context.Context, name string, build func(cur *config.Farm) (*config.Farm, error)) (*lb.Plan, error)
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
	// Limits bound the farms a client may create and the backends of a
	// farm body; zero fields take config's defaults.
	Limits config.Limits
	// Logger receives a line per failed request; default discard.
	Logger *slog.Logger
}

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error    string       `json:"error"`
	Problems []lb.Problem `json:"problems,omitempty"`
}

// PlanBody is the answer to a change sent with ?dry_run=true: what the
// change would send to the kernel. Nothing was changed, in the kernel or
// in the files.
type PlanBody struct {
	DryRun bool `json:"dry_run"`
	// Empty is true when the change would send nothing.
	Empty bool `json:"empty"`
	// Added, Changed and Removed name the farms concerned.
	Added   []string `json:"added"`
	Changed []string `json:"changed"`
	Removed []string `json:"removed"`
	// Rebuild says the whole table would be (re)created.
	Rebuild bool `json:"rebuild"`
	// Transactions, Messages and Elements count what would be sent.
	Transactions int `json:"transactions"`
	Messages     int `json:"messages"`
	Elements     int `json:"elements"`
	// NFT is the elements that would change, in nft syntax.
	NFT string `json:"nft"`
}

// NewPlanBody returns the body describing p.
func NewPlanBody(p *lb.Plan) PlanBody {
	nonNil := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	return PlanBody{DryRun: true, Empty: p.Empty(), Added: nonNil(p.Added), Changed: nonNil(p.Changed), Removed: nonNil(p.Removed),
		Rebuild: p.Rebuild, Transactions: p.Transactions, Messages: p.Messages, Elements: p.Elements, NFT: p.String()}
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
	opts.Limits = opts.Limits.WithDefaults()
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
	var ve *lb.ValidationError
	if errors.As(err, &ve) {
		body.Problems = ve.Problems
		body.Error = fmt.Sprintf("invalid configuration (%d %s)", len(ve.Problems), map[bool]string{true: "problem", false: "problems"}[len(ve.Problems) == 1])
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

// farmBody parses a farm from the request body, named as the path
// says when the body does not name it, and validates it alone: every
// problem of the body, parse and validation, is reported at once.
func (s *server) farmBody(w http.ResponseWriter, r *http.Request, pathName string) (config.Farm, bool) {
	data, ok := s.body(w, r)
	if !ok {
		return config.Farm{}, false
	}
	f, err := config.ParseAndValidateFarm("request body", data, pathName, s.Limits, lb.Options{})
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return config.Farm{}, false
	}
	return f, true
}

// dryRun reports whether the request asks for a dry run (?dry_run=true);
// it answers 400 to a value that is not a boolean.
func (s *server) dryRun(w http.ResponseWriter, r *http.Request) (dry, ok bool) {
	v := r.URL.Query().Get("dry_run")
	if v == "" {
		return false, true
	}
	dry, err := strconv.ParseBool(v)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("dry_run=%q is not true or false", v))
		return false, false
	}
	return dry, true
}

// plan answers a dry run of the change build makes to the farm name.
func (s *server) plan(w http.ResponseWriter, r *http.Request, name string, build func(cur *config.Farm) (*config.Farm, error)) {
	p, err := s.Service.DryRun(r.Context(), name, build)
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, NewPlanBody(p))
}

// roomForFarm refuses a new farm beyond Limits.MaxFarms.
func (s *server) roomForFarm(w http.ResponseWriter, r *http.Request, name string) bool {
	if _, err := s.Service.Farm(name); err == nil {
		return true // replaced, not added
	}
	if n := len(s.Service.Farms()); n >= s.Limits.MaxFarms {
		s.fail(w, r, http.StatusConflict, fmt.Errorf("the agent holds %d farms, the limit (limits.max_farms): remove one first", n))
		return false
	}
	return true
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
	dry, ok := s.dryRun(w, r)
	if !ok {
		return
	}
	f, ok := s.farmBody(w, r, "")
	if !ok {
		return
	}
	if dry {
		s.plan(w, r, f.Name, func(cur *config.Farm) (*config.Farm, error) {
			if cur != nil {
				return nil, fmt.Errorf("farm %q: %w", f.Name, daemon.ErrExists)
			}
			return &f, nil
		})
		return
	}
	if !s.roomForFarm(w, r, f.Name) {
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
	dry, ok := s.dryRun(w, r)
	if !ok {
		return
	}
	name := r.PathValue("farm")
	f, ok := s.farmBody(w, r, name)
	if !ok {
		return
	}
	if f.Name != name {
		s.fail(w, r, http.StatusBadRequest, fmt.Errorf("the body names farm %q but the path %q", f.Name, name))
		return
	}
	if dry {
		s.plan(w, r, name, func(*config.Farm) (*config.Farm, error) { return &f, nil })
		return
	}
	if !s.roomForFarm(w, r, name) {
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
	dry, ok := s.dryRun(w, r)
	if !ok {
		return
	}
	name := r.PathValue("farm")
	if dry {
		s.plan(w, r, name, func(cur *config.Farm) (*config.Farm, error) {
			if cur == nil {
				return nil, fmt.Errorf("farm %q: %w", name, daemon.ErrNotFound)
			}
			return nil, nil
		})
		return
	}
	if err := s.Service.DeleteFarm(r.Context(), name); err != nil {
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
	dry, ok := s.dryRun(w, r)
	if !ok {
		return
	}
	data, ok := s.body(w, r)
	if !ok {
		return
	}
	farm, backend := r.PathValue("farm"), r.PathValue("backend")
	ch, err := config.ParseBackendChange("request body", data, farm, backend)
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if dry {
		s.plan(w, r, farm, func(cur *config.Farm) (*config.Farm, error) {
			if cur == nil {
				return nil, fmt.Errorf("farm %q: %w", farm, daemon.ErrNotFound)
			}
			next := cur.Clone()
			j := slices.IndexFunc(next.Backends, func(x config.Backend) bool { return x.Name == backend })
			if j < 0 {
				return nil, fmt.Errorf("backend %q of farm %q: %w", backend, farm, daemon.ErrNotFound)
			}
			if ch.Weight != nil {
				next.Backends[j].Weight = *ch.Weight
			}
			if ch.State != nil {
				next.Backends[j].State = *ch.State
			}
			return &next, nil
		})
		return
	}
	b, err := s.Service.SetBackend(r.Context(), farm, backend, daemon.BackendChange{Weight: ch.Weight, State: ch.State})
	if err != nil {
		s.failService(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}
