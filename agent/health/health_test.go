package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func mustListen(tb testing.TB) (net.Listener, netip.AddrPort) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("failed to listen: %v", err)
	}
	tb.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l, netip.MustParseAddrPort(l.Addr().String())
}

func TestCheckTCP(t *testing.T) {
	l, addr := mustListen(t)
	var d net.Dialer
	spec := Spec{Type: TCP}.WithDefaults()
	if err := Check(t.Context(), d.DialContext, spec, addr); err != nil {
		t.Fatalf("check of a listening port failed: %v", err)
	}
	l.Close()
	if err := Check(t.Context(), d.DialContext, spec, addr); err == nil {
		t.Fatal("check of a closed port passed")
	}
}

func TestCheckHTTP(t *testing.T) {
	var code atomic.Int32
	code.Store(200)
	var gotPath, gotHost string
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotPath, gotHost = r.URL.Path, r.Host
		mu.Unlock()
		w.WriteHeader(int(code.Load()))
	}))
	defer srv.Close()
	addr := netip.MustParseAddrPort(srv.Listener.Addr().String())
	var d net.Dialer
	spec := Spec{Type: HTTP, Path: "/healthz", Host: "app.example", Expect: StatusRange{200, 204}}.WithDefaults()
	if err := Check(t.Context(), d.DialContext, spec, addr); err != nil {
		t.Fatalf("check failed: %v", err)
	}
	mu.Lock()
	if gotPath != "/healthz" || gotHost != "app.example" {
		t.Errorf("request path %q host %q, want /healthz app.example", gotPath, gotHost)
	}
	mu.Unlock()
	code.Store(503)
	if err := Check(t.Context(), d.DialContext, spec, addr); err == nil {
		t.Fatal("check of a 503 passed")
	}
	code.Store(302) // redirects are not followed
	if err := Check(t.Context(), d.DialContext, spec, addr); err == nil {
		t.Fatal("check of a 302 passed with expect 200-204")
	}
}

func TestCheckTimeout(t *testing.T) {
	block := func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	spec := Spec{Type: TCP, Timeout: 20 * time.Millisecond, Interval: time.Second}
	start := time.Now()
	err := Check(t.Context(), block, spec, netip.MustParseAddrPort("192.0.2.1:80"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("check took %s despite a 20ms timeout", d)
	}
}

func TestSpec(t *testing.T) {
	s := Spec{Type: HTTP}.WithDefaults()
	if s.Interval != DefaultInterval || s.Timeout != DefaultTimeout || s.Rise != DefaultRise || s.Fall != DefaultFall || s.Path != "/" || s.Expect != DefaultExpect {
		t.Errorf("defaults not applied: %+v", s)
	}
	if p := s.Problems(); len(p) != 0 {
		t.Errorf("default spec has problems: %v", p)
	}
	bad := Spec{Type: HTTP, Interval: time.Second, Timeout: 2 * time.Second, Rise: -1, Fall: -1, Path: "x"}
	if p := bad.Problems(); len(p) != 4 {
		t.Errorf("got problems %v, want timeout, rise, fall and path", p)
	}
	for _, tc := range []struct {
		in   string
		want StatusRange
		ok   bool
	}{{"200", StatusRange{200, 200}, true}, {"200-399", StatusRange{200, 399}, true}, {"399-200", StatusRange{}, false}, {"99", StatusRange{}, false}, {"abc", StatusRange{}, false}} {
		got, err := ParseStatusRange(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseStatusRange(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// fakeDial fails while down is set.
type fakeDial struct{ down atomic.Bool }

func (f *fakeDial) dial(ctx context.Context, network, address string) (net.Conn, error) {
	if f.down.Load() {
		return nil, errors.New("connection refused")
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func TestMonitorFallAndRise(t *testing.T) {
	var fd fakeDial
	events := make(chan Transition, 10)
	m := NewMonitor(Options{Dial: fd.dial, OnTransition: func(tr Transition) { events <- tr }})
	defer m.Close()
	k := Key{"web", "app0"}
	spec := Spec{Type: TCP, Interval: 10 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 2, Fall: 3}
	m.Update([]Target{{Key: k, Addr: netip.MustParseAddrPort("192.0.2.10:80"), Spec: spec},
		{Key: Key{"web", "unchecked"}, Spec: Spec{Type: None}}})
	if !m.Healthy(k) {
		t.Fatal("a new target is not healthy")
	}
	if _, ok := m.Status(Key{"web", "unchecked"}); ok {
		t.Error("a target of type none is checked")
	}
	fd.down.Store(true)
	tr := waitTransition(t, events)
	if tr.Healthy || tr.Err == nil || tr.Key != k {
		t.Fatalf("got transition %+v, want %v unhealthy with an error", tr, k)
	}
	if st, _ := m.Status(k); st.Healthy || st.Failures < 3 {
		t.Errorf("status %+v, want unhealthy after at least 3 failures", st)
	}
	fd.down.Store(false)
	if tr := waitTransition(t, events); !tr.Healthy {
		t.Fatalf("got transition %+v, want healthy", tr)
	}

	// A changed spec at the same address keeps the health; removal stops.
	spec.Rise = 5
	m.Update([]Target{{Key: k, Addr: netip.MustParseAddrPort("192.0.2.10:80"), Spec: spec, StartUnhealthy: true}})
	if !m.Healthy(k) {
		t.Error("changing the check lost the health")
	}
	m.Update(nil)
	if _, ok := m.Status(k); ok {
		t.Error("a removed target is still checked")
	}
}

func TestMonitorStartUnhealthy(t *testing.T) {
	var fd fakeDial
	events := make(chan Transition, 10)
	m := NewMonitor(Options{Dial: fd.dial, OnTransition: func(tr Transition) { events <- tr }})
	defer m.Close()
	k := Key{"web", "app0"}
	m.Update([]Target{{Key: k, Addr: netip.MustParseAddrPort("192.0.2.10:80"), StartUnhealthy: true,
		Spec: Spec{Type: TCP, Interval: 10 * time.Millisecond, Rise: 2}}})
	if m.Healthy(k) {
		t.Fatal("target started healthy")
	}
	if tr := waitTransition(t, events); !tr.Healthy {
		t.Fatalf("got %+v, want healthy after rise passes", tr)
	}
}

func waitTransition(tb testing.TB, ch <-chan Transition) Transition {
	tb.Helper()
	select {
	case tr := <-ch:
		return tr
	case <-time.After(5 * time.Second):
		tb.Fatal("no transition within 5s")
		return Transition{}
	}
}

func TestMonitorUpdateFarm(t *testing.T) {
	var fd fakeDial
	m := NewMonitor(Options{Dial: fd.dial})
	defer m.Close()
	spec := Spec{Type: TCP, Interval: time.Hour}
	target := func(farm, backend, addr string) Target {
		return Target{Key: Key{farm, backend}, Addr: netip.MustParseAddrPort(addr), Spec: spec}
	}
	m.Update([]Target{target("web", "a", "192.0.2.1:80"), target("web", "b", "192.0.2.2:80"), target("db", "a", "192.0.2.3:5432")})
	// Only web's checks change: b goes, c comes, db's stays.
	m.UpdateFarm("web", []Target{target("web", "a", "192.0.2.1:80"), target("web", "c", "192.0.2.4:80"),
		target("db", "x", "192.0.2.9:80")}) // another farm's target is ignored
	for k, want := range map[Key]bool{{"web", "a"}: true, {"web", "b"}: false, {"web", "c"}: true, {"db", "a"}: true, {"db", "x"}: false} {
		if _, ok := m.Status(k); ok != want {
			t.Errorf("%v checked: %v, want %v", k, ok, want)
		}
	}
	m.UpdateFarm("web", nil)
	if _, ok := m.Status(Key{"web", "a"}); ok {
		t.Errorf("web/a still checked after its farm was removed")
	}
	if _, ok := m.Status(Key{"db", "a"}); !ok {
		t.Errorf("db/a stopped by a change to web")
	}
}
