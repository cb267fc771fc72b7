#!/usr/bin/env bash
# Stops what scripts/slurm/cluster_up.sh started (listed in /var/lib/sop-slurm/started), and
# only that: daemons that were running before it are left running. Jobs still on the
# cluster are cancelled first, so that no job step outlives its slurmd. Run as root.
# Packages, /etc/slurm/slurm.conf and the logs in /var/lib/sop-slurm/log stay.
set -euo pipefail

STATE=/var/lib/sop-slurm
die() { echo "cluster_down.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it stops daemons that root started"
[ -s "$STATE/started" ] || { echo "cluster_down.sh: nothing of ours is running"; exit 0; }

if grep -q '^slurmctld ' "$STATE/started" && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
  scancel --quiet $(squeue -h -o %i) || true
  for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 1; done
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
rm -f "$STATE/started"
