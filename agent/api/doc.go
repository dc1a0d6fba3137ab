// Package api is the l4nft agent's HTTP/JSON API: the handler the daemon
// serves and the client the CLI uses.
//
// # Endpoints
//
//	GET    /healthz                              200 "ok" while the kernel matches the desired state, else 503
//	GET    /metrics                              Prometheus metrics
//	GET    /v1/status                            daemon.Status: farms, backends, health, counters, last apply
//	GET    /v1/ruleset                           the installed ruleset in nft syntax (text/plain)
//	POST   /v1/reload                            reload the configuration file now (like SIGHUP)
//	GET    /v1/farms                             every farm, as in the configuration file
//	POST   /v1/farms                             create a farm (409 if it exists)
//	GET    /v1/farms/{farm}                      one farm
//	PUT    /v1/farms/{farm}                      create or replace a farm (201 or 200)
//	DELETE /v1/farms/{farm}                      delete a farm (204)
//	GET    /v1/farms/{farm}/backends/{backend}   one backend
//	PATCH  /v1/farms/{farm}/backends/{backend}   {"weight": 3} and/or {"state": "drain"}
//
// Farm bodies use the configuration file's schema in JSON and are checked
// exactly like the file: unknown fields and every validation problem are
// reported, with the line in the body. A change is applied in one atomic
// transaction and written back to the configuration file before the
// response is sent.
//
// Errors are JSON: {"error": "...", "problems": [{"file", "line", "path",
// "message"}]}. Status codes: 400 malformed, oversized (over MaxBody) or
// invalid request; 401 missing or wrong token; 404 no such farm or
// backend; 409 the farm exists, or the configuration file on disk is
// invalid; 500 the kernel refused the change.
//
// # Security
//
// The unix socket (ListenUnix) is created with mode 0600: only root may
// use it, and it needs no token. A TCP listener requires a bearer token
// on every endpoint but /healthz ("Authorization: Bearer TOKEN"), compared
// in constant time; the agent refuses to start one without a token, and
// without TLS on a non-loopback address.
package api
