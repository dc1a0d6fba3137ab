// Package health checks backends the way an operator expects a load
// balancer to: a TCP connect or an HTTP GET every Interval, each bounded by
// Timeout; Fall consecutive failures mark a backend unhealthy and Rise
// consecutive passes bring it back.
//
// A Monitor runs one checker goroutine per Target and reports every
// transition through a callback. It never changes the data plane itself:
// the agent's daemon turns "unhealthy" into "no new connections".
//
// # Network namespaces
//
// Checks must leave from the balancer's network namespace, where the routes
// to the backends are. NetNSDialer returns a DialFunc that creates each
// socket on an OS thread switched into the namespace (behind a file
// descriptor) and switches the thread back at once; a socket keeps the
// namespace it was created in, so the rest of the check runs on any
// goroutine. Only literal addresses are dialed, so no resolver goroutine
// ever creates a socket outside the namespace.
//
// # Initial state
//
// A new target starts healthy unless the caller says otherwise (see
// Target.StartUnhealthy), so that restarting the agent never takes healthy
// backends out of service while their first checks run.
package health
