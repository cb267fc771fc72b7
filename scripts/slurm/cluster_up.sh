#!/usr/bin/env bash
# A one-node SLURM cluster on this Debian machine, for the tests marked `slurm`
# (tests/test_slurm.py) and for trying scripts/slurm/train.sbatch: Debian's slurm-wlm
# (22.05 on Debian 12) and munge, with munged, slurmctld and slurmd started by hand as root
# (no systemd, no cgroups). Run as root. Idempotent: what is installed or running already
# is kept; daemons it starts begin from a clean slate (slurmctld -c), so jobs recorded by an
# earlier cluster that was never stopped (a machine halted mid-test) do not hold the node.
# It returns once the node is idle. scripts/slurm/cluster_down.sh stops what this
# started, and only that.
set -euo pipefail

STATE=/var/lib/sop-slurm        # spool, state, logs, pid files; what was started: $STATE/started
CONF=/etc/slurm/slurm.conf      # where Debian's SLURM commands look for it
MARK='# Written by scripts/slurm/cluster_up.sh (chainermn-sop-trainer): a one-node test cluster.'

die() { echo "cluster_up.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it installs packages and starts daemons"

missing=0
for tool in slurmctld slurmd sbatch munged; do command -v "$tool" >/dev/null || missing=1; done
if [ "$missing" = 1 ]; then
  command -v apt-get >/dev/null || die "no SLURM here and no apt-get to install it (Debian only)"
  export DEBIAN_FRONTEND=noninteractive
  # The package lists of a fresh machine may be stale or missing: update, then install.
  apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge \
    >/dev/null || die "apt-get install slurmctld slurmd slurm-client munge failed"
fi

# Only ever replace a configuration that this script wrote: never a real cluster's.
if [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; not touching a real cluster's setup"
fi
host=$(hostname -s)
mkdir -p "$STATE"/{ctld,spool,log}
# The node as slurmd sees it (cores, sockets, memory); its UpTime line is not config.
node=$(slurmd -C | grep '^NodeName=')
new=$(cat <<EOF
$MARK
ClusterName=sopci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits this long (default 120 s) before it may start again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No systemd, no cgroups: processes tracked by their parents, tasks bound by affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
# No default MPI plugin: the batch script must choose (srun --mpi=...).
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Job ends, with state and exit code, for \`sacct -c\` (no accounting database here).
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
$node State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$(cat "$CONF" 2>/dev/null)" != "$new" ]; then
  if [ -s "$STATE/started" ]; then   # daemons of ours running on the old configuration
    "$(dirname "$0")/cluster_down.sh"
  fi
  printf '%s\n' "$new" > "$CONF"
fi

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
started() { echo "$1 $2" >> "$STATE/started"; }   # name and pid file, for cluster_down.sh

if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  # munged refuses to run as root; its run directory is tmpfs, gone after a reboot.
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/)"
  started munged /run/munge/munged.pid
fi
if ! alive "$STATE/slurmctld.pid"; then
  slurmctld -c || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
  started slurmctld "$STATE/slurmctld.pid"
fi
if ! alive "$STATE/slurmd.pid"; then
  slurmd -c || die "slurmd did not start (see $STATE/log/slurmd.log)"
  started slurmd "$STATE/slurmd.pid"
fi

for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  if [ "$state" = idle ]; then
    echo "cluster_up.sh: node $host idle ($(sinfo -h -o '%c CPUs, partition %P'))"
    exit 0
  fi
  sleep 1
done
tail -n 20 "$STATE"/log/slurm*.log >&2 || true
squeue >&2 || true
die "node $host not idle after 60 s (state: ${state:-none}; sinfo -R says why)"
