#!/bin/sh
# keepalived notify script for an l4nft active/standby pair.
#
# keepalived.conf:   notify /etc/keepalived/l4nft-ha-notify.sh
# keepalived calls it as: l4nft-ha-notify.sh TYPE NAME STATE PRIORITY
# (for example: INSTANCE l4nft MASTER 150).
#
# It logs the transition and runs conntrackd's documented primary-backup
# sequence (conntrackd's doc/sync/primary-backup.sh):
#   MASTER: -c commit the external cache (the peer's connections) into the
#           kernel, -f flush both caches, -R resync the internal cache from
#           the kernel, -B send a bulk update to the backup.
#   BACKUP: -s check conntrackd is running (start it if not), -t shorten
#           the kernel's timers so entries left from when this node was
#           master expire, -n ask the master for a full resync.
#   FAULT:  -t.
#
# Settings (environment, for tests and unusual layouts):
#   CONNTRACKD          conntrackd binary          (/usr/sbin/conntrackd)
#   CONNTRACKD_CONFIG   its configuration file     (/etc/conntrackd/conntrackd.conf)
#   CONNTRACKD_LOCK     its LockFile               (/var/lock/conntrack.lock)
#   L4NFT_HA_LOG        append log lines to this file instead of syslog
set -u

CONNTRACKD=${CONNTRACKD:-/usr/sbin/conntrackd}
CONNTRACKD_CONFIG=${CONNTRACKD_CONFIG:-/etc/conntrackd/conntrackd.conf}
CONNTRACKD_LOCK=${CONNTRACKD_LOCK:-/var/lock/conntrack.lock}
L4NFT_HA_LOG=${L4NFT_HA_LOG:-}

TYPE=${1:-?} NAME=${2:-?} STATE=${3:-?} PRIORITY=${4:-?}

log() {
	if [ -n "$L4NFT_HA_LOG" ]; then
		echo "$(date +%s.%N) l4nft-ha: $*" >>"$L4NFT_HA_LOG"
	else
		logger -t l4nft-ha -- "$*"
	fi
}

ct() {
	if ! "$CONNTRACKD" -C "$CONNTRACKD_CONFIG" "$@" >/dev/null 2>&1; then
		log "ERROR: conntrackd $* failed"
		return 1
	fi
}

log "$TYPE $NAME is now $STATE (priority $PRIORITY)"

case "$STATE" in
MASTER)
	ct -c # commit the external cache into the kernel table
	ct -f # flush the internal and the external caches
	ct -R # resynchronize the internal cache with the kernel table
	ct -B # send a bulk update to the backup
	log "conntrack state committed"
	;;
BACKUP)
	if ! "$CONNTRACKD" -C "$CONNTRACKD_CONFIG" -s >/dev/null 2>&1; then
		if [ -f "$CONNTRACKD_LOCK" ]; then
			log "WARNING: conntrackd was not cleanly stopped; removing $CONNTRACKD_LOCK"
			rm -f "$CONNTRACKD_LOCK"
		fi
		"$CONNTRACKD" -C "$CONNTRACKD_CONFIG" -d || log "ERROR: cannot start conntrackd"
	fi
	ct -t # shorten kernel timers: entries left from when this node was master expire
	ct -n # request a full resync from the master
	;;
FAULT)
	ct -t
	;;
STOP | DELETED)
	;;
*)
	log "ERROR: unknown state $STATE"
	exit 1
	;;
esac
exit 0
