// Package config reads and writes the l4nft agent's configuration file.
//
// The file is YAML (JSON is accepted too, being a subset of YAML). Every
// problem is reported with its file, line and field, such as
//
//	l4nft.yaml:14: farms[web].backends[app0].weight: 0 is not a weight (want 1-10000)
//
// and Load reports all of them at once: unknown fields, values that do not
// parse, and every problem lb.Validate finds in the resulting State.
//
// # Schema
//
//	table: l4nft                    # nftables table owned by the agent (default l4nft)
//	options:                        # read at start; a change needs a restart
//	  mark_mask: 0xffff0000         # conntrack mark bits (default 0xffff0000)
//	  local_connections: false      # also balance connections made on the balancer
//	  flush_conntrack: false        # cut established connections of removed/down backends
//	api:                            # read at start; a change needs a restart
//	  socket: /run/l4nft.sock       # unix socket, mode 0600 (default /run/l4nft.sock)
//	  listen: 127.0.0.1:9100        # optional TCP listener, requires token_file
//	  token_file: /etc/l4nft/token  # bearer token for the TCP listener
//	  tls_cert: /etc/l4nft/api.crt  # required when listen is not a loopback address
//	  tls_key: /etc/l4nft/api.key
//	farms:
//	  - name: web
//	    address: 198.51.100.250     # the virtual address, IPv4 or IPv6
//	    ports: ["443", "8000-8010"] # numbers or "first-last" ranges; none for protocol all
//	    protocol: tcp               # tcp (default) | udp | tcp+udp | sctp | all (every protocol; other farms' ports on the address win)
//	    mode: nat                   # nat (default) | dnat
//	    scheduler: consistent       # weight (weighted random, default) | roundrobin | hash | symhash | consistent
//	    hash_fields: [src_ip]       # hash, consistent: src_ip (default) | src_port | dst_ip | dst_port
//	    slots: 0                    # consistent: table size, rounded up to a prime; 0 = 100 per backend
//	    persistence:                # omitted = none; new connections of a client go where its last went
//	      by: src_ip                # src_ip (default) | src_ip_port | dst_ip
//	      ttl: 5m                   # 1s-24h after the client's last new connection; required
//	    limits:                     # omitted = none; each number 0-1000000, 0 = no limit
//	      new_per_second: 1000      # new connections to the farm per second, all clients together
//	      burst: 2000               # beyond the rates for a moment (default: one second's worth)
//	      new_per_client_per_second: 20 # new connections per second of each client address
//	      established_per_client: 100   # connections open at once of each client address
//	      action: reject            # reject (default: tcp reset, else icmp unreachable) | drop
//	    tcp_strict: false           # drop packets conntrack finds invalid (not for protocol all)
//	    allow: [192.0.2.0/24]       # if given, only clients in these prefixes; an address is its own prefix
//	    deny: ["192.0.2.66"]        # clients refused, even if allowed; the farm's family, at most 100000 each
//	    helpers: [ftp]              # conntrack helpers: ftp (tcp) | tftp (udp) | sip (tcp, udp)
//	    source: 198.51.100.250      # nat mode: SNAT source; omitted = masquerade
//	    health:                     # omitted = type none
//	      type: tcp                 # tcp | http | none
//	      interval: 2s              # default 2s
//	      timeout: 1s               # default 1s, at most interval
//	      rise: 2                   # passes to come back (default 2)
//	      fall: 3                   # failures to go down (default 3)
//	      port: 443                 # default: the backend's port, else the farm's first port (required for protocol all)
//	      path: /healthz            # http: request path (default /)
//	      host: www.example.com     # http: Host header (default the backend's address)
//	      expect: 200-399           # http: accepted status codes (default 200-399)
//	    backends:
//	      - {name: app0, address: 203.0.113.10, port: 443, weight: 1, state: up}
//	      - name: app1
//	        address: 203.0.113.11
//	        port: 443               # omitted or 0 = the port the client connected to (always, for protocol all)
//	        weight: 2               # 1-10000, default 1
//	        state: up               # up (default) | drain | down
//	        health: {path: /ready}  # overrides the farm's health fields it names
//
// Unknown fields are errors. An empty file is an error too (a truncated
// write must not remove every farm): write "farms: []" to serve nothing.
//
// # Configuration directories
//
// A configuration may also be a directory: an optional main file
// (MainFile, l4nft.yaml) with table, options and api, and one file per
// farm in FarmsDir (farms.d/NAME.yaml, .yml or .json) holding the farm
// named NAME. LoadDir reads one; ParseFarmFile and ValidateFarm read and
// check one farm file alone, which is what a reload of a changed file
// costs.
//
// # Writing
//
// WriteFile replaces a file atomically and durably (temporary file in the
// same directory, fsync, rename, fsync of the directory), keeping its mode,
// owner and group; RemoveStaleTemp removes what a crash left. The agent
// uses it to persist changes made through its API. Files are written in
// canonical form by a direct encoder (Fragment, Assemble, MarshalFarmFile):
// comments and formatting of the original are not kept. A file whose name
// ends in .json is written as JSON.
package config
