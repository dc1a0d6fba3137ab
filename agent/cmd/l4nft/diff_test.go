package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// diff exits 2 on any error, never 1, so that "1" always means "would
// change"; its flags and usage errors also exit 2.
func TestDiffErrorsExitTwo(t *testing.T) {
	bad := mustWrite(t, "bad.yaml", "farms: [{name: web}]\n")
	for _, args := range [][]string{
		{"diff"},
		{"diff", "a.yaml", "b.yaml"},
		{"diff", "--bogus", "a.yaml"},
		{"diff", filepath.Join(t.TempDir(), "missing.yaml")},
		{"diff", bad},
	} {
		if code, _, errOut := mustRun(t, args...); code != 2 || errOut == "" {
			t.Errorf("l4nft %q: exit %d, stderr %q; want 2 with a message", args, code, errOut)
		}
	}
	if _, _, errOut := mustRun(t, "diff", bad); !strings.Contains(errOut, "bad.yaml:1: farms[web].address") {
		t.Errorf("diff of an invalid file does not list its problems: %q", errOut)
	}
}

// diff and apply --dry-run name the flags in their help.
func TestDiffAndDryRunHelp(t *testing.T) {
	for _, c := range []struct{ cmd, want string }{
		{"diff", "exit 0 if nothing, 1 if something, 2 on error"},
		{"diff", "-netns"},
		{"apply", "-dry-run"},
	} {
		if _, out, _ := mustRun(t, c.cmd, "-help"); !strings.Contains(out, c.want) {
			t.Errorf("l4nft %s -help lacks %q:\n%s", c.cmd, c.want, out)
		}
	}
	if _, out, _ := mustRun(t, "help"); !strings.Contains(out, "diff") {
		t.Errorf("l4nft help does not list diff:\n%s", out)
	}
}

// A token is never sent over plain http off loopback.
func TestTokenNotSentInClear(t *testing.T) {
	token := mustWrite(t, "token", "secret\n")
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"10.0.0.1:9100", false},
		{"http://10.0.0.1:9100", false},
		{"http://agent.example:9100", false},
		{"127.0.0.1:1", true},
		{"http://[::1]:1", true},
		{"http://localhost:1", true},
		{"https://127.0.0.1:1", true},
	} {
		code, _, errOut := mustRun(t, "status", "--addr", tc.addr, "--token-file", token)
		refused := strings.Contains(errOut, "refusing to send the token over plain http")
		if refused == tc.ok || code == 0 {
			t.Errorf("status --addr %s: exit %d, stderr %q; want refused=%v", tc.addr, code, errOut, !tc.ok)
		}
	}
}
