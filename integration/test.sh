#!/usr/bin/env bash
# The README's test command: installs the Debian packages the tests need
# (only those missing), then runs every test as root, directly or through
# sudo (go test -exec sudo builds as you and runs the test binaries as
# root, so Go need not be on sudo's PATH). Extra arguments go to go test.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || { echo "the tests need root: run as root or install sudo" >&2; exit 1; }
	sudo=(sudo)
fi
command -v go >/dev/null || { echo "Go 1.26 or later is needed on PATH (https://go.dev/dl)" >&2; exit 1; }

# nftables: nft -f of the rendered ruleset and listings compared byte for
# byte; iptables: the benchmark's seed-design variants; iproute2 and
# util-linux (nsenter): commands inside test namespaces; conntrack:
# inspecting flows.
packages=(nftables iptables iproute2 util-linux conntrack ca-certificates keepalived conntrackd)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "installing ${missing[*]}"
	"${sudo[@]}" apt-get update -qq
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Packages given (./something) replace ./...; other arguments are flags.
pkgs=(./...)
for a in "$@"; do
	case "$a" in ./*) pkgs=() ;; esac
done
exec go test ${sudo:+-exec sudo} -count=1 "$@" "${pkgs[@]}"
