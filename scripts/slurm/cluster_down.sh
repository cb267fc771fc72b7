#!/usr/bin/env bash
# Stops what scripts/slurm/cluster_up.sh [--testbed] started (listed in
# /var/lib/sop-slurm/started, /var/lib/sop-slurm/testbed/started), and only that: daemons
# that were running before it are left running. Jobs still on the cluster are cancelled
# first, so that no job step outlives its slurmd. Run as root. Packages, the configuration
# and the logs (/var/lib/sop-slurm/log, /var/lib/sop-slurm/testbed/log) stay; on the test
# hosts, /etc/slurm is their own again.
set -euo pipefail

die() { echo "cluster_down.sh: $*" >&2; exit 1; }
case "${1:-}" in
  '') STATE=/var/lib/sop-slurm; hosts=; on() { shift; "$@"; } ;;
  --testbed)  # the cluster's hosts, from its configuration; the controller on the first
    STATE=/var/lib/sop-slurm/testbed
    hosts=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' "$STATE/etc/slurm.conf" 2>/dev/null | tr , ' ' || true)
    on() { "$(dirname "$0")/../testbed/on" "$@"; } ;;
  *) die "unknown option '$1' (none: the one-node cluster; --testbed: the test hosts' one)" ;;
esac
[ "$(id -u)" = 0 ] || die "run it as root: it stops daemons that root started"
[ -s "$STATE/started" ] || { echo "cluster_down.sh: nothing of ours is running"; exit 0; }
controller=$(echo $hosts | cut -d' ' -f1)   # where squeue and scancel run

if grep -q '^slurmctld ' "$STATE/started" && [ -n "$(on "$controller" squeue -h -o %i 2>/dev/null)" ]; then
  on "$controller" scancel --quiet $(on "$controller" squeue -h -o %i) || true
  for _ in $(seq 60); do [ -z "$(on "$controller" squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
fi

# The last one started stops first (slurmd, slurmctld, then munged, which they use).
tac "$STATE/started" | while read -r name pidfile; do
  pid=$(cat "$pidfile" 2>/dev/null || true)
  # Only the process of that name: a pid file can outlive its process, its pid reused.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) still running 30 s after SIGTERM"
    echo "cluster_down.sh: stopped $name (pid $pid)"
  fi
done
for h in $hosts; do   # those still up
  on "$h" sh -c 'umount /etc/slurm; umount -R /sys/fs/cgroup' 2>/dev/null || true
done
rm -f "$STATE/started"
