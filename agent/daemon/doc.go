// Package daemon is the l4nft agent's control loop: it keeps the kernel's
// ruleset matching the configuration file, the operator's API changes and
// the backends' health.
//
// # Effective state
//
// The file (or the API, which writes the file) says what each backend
// should be: up, drain or down. The health monitor says whether it works.
// The state applied to the kernel is the file's, except that a backend the
// file says is up and whose checks fail is applied as drain: it takes no
// new connections and its established ones continue. An operator's drain
// or down always wins over health.
//
// # How a change reaches the kernel
//
// Every path ends in the library (see package lb for the rest):
//
//   - API change (change.go): the touched farm is validated alone
//     (config.ValidateFarm), applied with lb.Balancer.SetFarm or
//     RemoveFarm, written to disk (its own file in a configuration
//     directory), then published in place of the old farm.
//   - File edit (reload.go): the changed files are found by their size,
//     times and inode, read, parsed and validated; the farms that changed
//     are applied one by one with SetFarm (many at once, or changes that
//     only work together, with one whole Apply).
//   - Health transition (daemon.go, applyHealth): the monitor reports the
//     farm; its effective state (a failing backend the file says is up is
//     applied as drain) is applied with SetFarm.
//   - Drift: lb.Balancer.Watch reports another program's change to the
//     table at once, and the resync tick (Options.ResyncInterval) checks
//     the ruleset generation; either way Resync re-reads the table and
//     applies the effective state, which repairs the smallest difference.
//
// # Reloads
//
// An edit is seen at once through inotify (the fsnotify library), which
// names the file edited, so that a directory of 10,000 farm files costs a
// stat of the one edited; it is loaded once two looks 20 ms apart agree.
// The file is also polled (every Options.WatchInterval, default 1s), as
// the backstop for lost events and file systems without inotify, and
// reloaded when its content changes; SIGHUP (Reload) reloads it at once
// and also re-reads the kernel (Resync), repairing a ruleset changed
// behind the agent's back. Polling the content's hash rather than using
// inotify works the same whether the file is edited in place, replaced by
// rename (editors, WriteFile), swapped through a symbolic link (Kubernetes
// ConfigMaps) or lives on a network file system, and needs no watch to be
// re-armed; the cost is one read of a small file per interval. A new
// content is loaded once two consecutive polls read it unchanged, so a
// file caught half written (which may well be valid YAML missing farms)
// is never applied; SIGHUP and API changes read the file at once.
//
// A file that fails validation is never applied: what runs stays as it
// was, the problems are logged once and shown in Status until a valid file
// replaces it.
//
// # API changes
//
// A change through the API is built on the file as it is on disk (an edit
// not yet reloaded is loaded first, and a change is refused while the file
// is invalid), validated like the file, applied in one transaction, then
// written back to the file atomically. If writing fails, the change is
// rolled back in the kernel too, so the kernel and the file never
// disagree for longer than a failed request.
//
// # Restarts
//
// New adopts the table already installed (lb.Open) and its first apply
// sends nothing when the configuration did not change: established
// connections keep their backends, and nothing is rebuilt. Backends that
// were installed drained by health while the file says up start unhealthy
// and return after their checks pass.
package daemon
