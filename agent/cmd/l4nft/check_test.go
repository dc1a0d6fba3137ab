package main

import (
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// mustHealthz serves /healthz on a unix socket in a temporary directory,
// answering code and body, and returns the socket's path.
func mustHealthz(t *testing.T, code int, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "l4nft.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("failed to listen: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
		w.Write([]byte(body))
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return path
}

func TestCheck(t *testing.T) {
	healthy := mustHealthz(t, http.StatusOK, "ok\n")
	drifted := mustHealthz(t, http.StatusServiceUnavailable, "the kernel differs from the desired state and is not repaired yet\n")
	broken := mustHealthz(t, http.StatusInternalServerError, "boom\n")
	for _, tt := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"healthy", []string{"--socket", healthy}, 0, "OK: the agent on " + healthy},
		{"quiet", []string{"--socket", healthy, "--quiet"}, 0, ""},
		{"drifted", []string{"--socket", drifted}, 1, "FAIL: the kernel does not match the agent's configuration: the kernel differs from the desired state and is not repaired yet\n"},
		{"not running", []string{"--socket", filepath.Join(t.TempDir(), "none.sock")}, 1, "FAIL: the agent is not running (nothing listens on "},
		{"other status", []string{"--socket", broken}, 1, "answered HTTP 500: boom"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, out, _ := mustRun(t, append([]string{"check"}, tt.args...)...)
			if code != tt.code {
				t.Errorf("exit %d, want %d (output %q)", code, tt.code, out)
			}
			if !strings.Contains(out, tt.want) || (tt.want == "" && out != "") {
				t.Errorf("output %q, want it to contain %q", out, tt.want)
			}
			if strings.Count(out, "\n") > 1 {
				t.Errorf("output %q is more than one line", out)
			}
		})
	}
}

func TestCheckUsage(t *testing.T) {
	for _, args := range [][]string{{"check", "extra"}, {"check", "--timeout", "0s"}, {"check", "--timeout", "soon"}} {
		if code, _, errOut := mustRun(t, args...); code != 2 || errOut == "" {
			t.Errorf("l4nft %q: exit %d (stderr %q), want 2 with usage", args, code, errOut)
		}
	}
}
