#!/usr/bin/env bash
# Takes down what scripts/testbed/up.sh brought up (listed in /var/lib/sop-testbed/started),
# and only that: the test hosts' sshd, whatever still runs on a test host (in its network
# namespace), the namespaces, the bridge. Keys and the hosts file stay. Run as root.
set -euo pipefail
STATE=/var/lib/sop-testbed
die() { echo "down.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it deletes network namespaces"
[ -s "$STATE/started" ] || { echo "down.sh: nothing of ours is up"; exit 0; }

# Processes in a test host's network namespace (its sshd and all that ran through it).
in_namespace() {
  local ns=/run/netns/$1 pid
  [ -e "$ns" ] || return 0
  local inode; inode=$(stat -L -c %i "$ns")
  for pid in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$pid/ns/net" 2>/dev/null)" = "$inode" ] && echo "${pid#/proc/}"
  done
  return 0
}

while read -r kind what; do
  [ "$kind" = netns ] || continue
  pids=$(in_namespace "$what")
  if [ -n "$pids" ]; then
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 20); do [ -z "$(in_namespace "$what")" ] && break; sleep 0.5; done
    pids=$(in_namespace "$what")
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  fi
done < "$STATE/started"
tac "$STATE/started" | while read -r kind what; do
  if [ "$kind" = netns ] && [ -e "/run/netns/$what" ]; then
    ip netns delete "$what"   # its veth ends (and the bridge, in soptb-sw) go with it
    rm -rf "/etc/netns/$what"
    echo "down.sh: deleted $what"
  fi
done
rm -f "$STATE/started" "$STATE"/n*/sshd.pid
