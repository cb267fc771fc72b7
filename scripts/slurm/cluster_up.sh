#!/usr/bin/env bash
# A SLURM test cluster on this Debian machine, for the tests marked `slurm` and for trying
# scripts/slurm/train.sbatch: Debian's slurm-wlm (22.05 on Debian 12) and munge, with
# munged, slurmctld and slurmd started by hand as root (no systemd, no cgroups).
#   scripts/slurm/cluster_up.sh             one node, this machine (tests/system/test_slurm.py)
#   scripts/slurm/cluster_up.sh --testbed [HOST...]   one node per test host of
#       scripts/testbed/up.sh (every one, or those named), for tests/system/test_multinode_slurm.py
# --testbed: slurmctld on the first host, a slurmd on every host under its host name, each
# in that host's namespaces; the hosts see the cluster's configuration as /etc/slurm (a
# bind mount in their own mount namespaces), so sbatch, srun and friends run there as on
# any cluster (`scripts/testbed/on sop-n1 sbatch ...`), while this machine's /etc/slurm
# stays the one-node cluster's: the two can be up at once. munged (this machine's) serves
# both through its socket, a file every host sees.
# Run as root. Idempotent: what is installed or running already is kept; daemons it starts
# begin from a clean slate (slurmctld -c, slurmd -c), so jobs recorded by an earlier
# cluster that was never stopped (a machine halted mid-test) do not hold a node. It returns
# once every node is idle. scripts/slurm/cluster_down.sh [--testbed] stops what this
# started, and only that.
set -euo pipefail

die() { echo "cluster_up.sh: $*" >&2; exit 1; }
case "${1:-}" in
  '') testbed= ;;
  --testbed) testbed=1; shift ;;
  *) die "unknown option '$1' (none: a one-node cluster; --testbed: one on the test hosts)" ;;
esac
[ "$(id -u)" = 0 ] || die "run it as root: it installs packages and starts daemons"

BED=/var/lib/sop-testbed        # scripts/testbed/up.sh's
ON=$(dirname "$0")/../testbed/on
if [ -z "$testbed" ]; then
  STATE=/var/lib/sop-slurm      # spool, state, logs, pid files; what was started: $STATE/started
  MARK='# Written by scripts/slurm/cluster_up.sh (chainermn-sop-trainer): a one-node test cluster.'
  CONF=/etc/slurm/slurm.conf    # where Debian's SLURM commands look for it
  host=$(hostname -s)
  hosts=$host
  on() { shift; "$@"; }         # every node is this machine
else
  STATE=/var/lib/sop-slurm/testbed
  CONF=$STATE/etc/slurm.conf    # /etc/slurm/slurm.conf on the test hosts
  MARK='# Written by scripts/slurm/cluster_up.sh --testbed (chainermn-sop-trainer): a test cluster.'
  [ -s "$BED/started" ] && [ -s "$BED/hosts" ] \
    || die "no test hosts are up: scripts/testbed/up.sh brings them up (as root)"
  hosts=${*:-$(cat "$BED/hosts")}
  for h in $hosts; do
    grep -q " $h\$" "$BED/etc_hosts" || die "no test host $h (scripts/testbed/up.sh N brings up sop-n1..N)"
  done
  host=$(echo $hosts | cut -d' ' -f1)  # the controller's
  # By address: a later up.sh with fewer hosts rewrites the hosts' /etc/hosts.
  addr() { awk -v h="$1" '$2 == h {print $1}' "$BED/etc_hosts"; }
  on() { "$ON" "$@"; }
fi

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
if [ -z "$testbed" ] && [ -e "$CONF" ] && ! grep -qxF "$MARK" "$CONF"; then
  die "$CONF exists and was not written by this script; not touching a real cluster's setup"
fi
mkdir -p "$STATE"/{ctld,spool,log} "$(dirname "$CONF")"
# The nodes as slurmd sees them (cores, sockets, memory; its UpTime line is not config):
# the test hosts share this machine's, under their own names.
node=$(slurmd -C | grep '^NodeName=' | sed "s/^NodeName=[^ ]*/NodeName=$(echo $hosts | tr ' ' ,)/")
controller=$host
if [ -z "$testbed" ]; then
  timeouts=
else
  node="$node NodeAddr=$(for h in $hosts; do addr "$h"; done | paste -sd,)"
  controller="$host($(addr "$host"))"
  # A test host off the network is set DOWN, and its job ended, 20 to 30 s after its last
  # answer (SLURM's default: 300 s); what runs on it ends by itself (docs/across_nodes.md).
  timeouts='SlurmdTimeout=20'
fi
# Job ids of their own per cluster (slurmctld -c starts them again): MPICH names its
# shared-memory segments after the job step, and a segment left by a killed job of the other
# cluster must not be taken for a new job's.
first_job_id=${testbed:+100000}
new=$(cat <<EOF
$MARK
ClusterName=sop${testbed:+tb}ci
FirstJobId=${first_job_id:-1}
SlurmctldHost=$controller
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits this long (default 120 s) before it may start again.
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
# One folder, pid file and log per node (%n: the node's name), as several slurmd may share
# a filesystem.
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
$timeouts
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
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)
if [ "$(cat "$CONF" 2>/dev/null)" != "$new" ]; then
  if [ -s "$STATE/started" ]; then   # daemons of ours running on the old configuration
    "$(dirname "$0")/cluster_down.sh" ${testbed:+--testbed}
  fi
  printf '%s\n' "$new" > "$CONF"
fi
for h in $hosts; do mkdir -p "$STATE/spool/$h"; done
if [ -n "$testbed" ]; then
  # In each host's own mount namespace (gone with the host, or undone by cluster_down.sh):
  # the cluster's /etc/slurm, and the cgroup folder slurmd 22.05 insists on seeing even
  # where no cgroup plugin is used (`ip netns exec` hid this machine's under a new /sys).
  for h in $hosts; do
    on "$h" sh -ec "
      mountpoint -q /etc/slurm || mount --bind '$(dirname "$CONF")' /etc/slurm
      if ! mountpoint -q /sys/fs/cgroup; then
        mount -t tmpfs -o mode=755 sop-cgroup /sys/fs/cgroup
        mkdir /sys/fs/cgroup/systemd
        mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
      fi" || die "cannot mount /etc/slurm and /sys/fs/cgroup on $h"
  done
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
  on "$host" slurmctld -c || die "slurmctld did not start (see $STATE/log/slurmctld.log)"
  started slurmctld "$STATE/slurmctld.pid"
fi
for h in $hosts; do
  if ! alive "$STATE/slurmd-$h.pid"; then
    on "$h" slurmd -c || die "slurmd on $h did not start (see $STATE/log/slurmd-$h.log)"
    started slurmd "$STATE/slurmd-$h.pid"
  fi
done

count=$(echo $hosts | wc -w)
for _ in $(seq 60); do
  states=$(on "$host" sinfo -h -N -o %T 2>/dev/null | sort | uniq -c | xargs || true)
  if [ "$states" = "$count idle" ]; then
    echo "cluster_up.sh: $(echo $hosts) idle ($(on "$host" sinfo -h -o '%c CPUs each, partition %P'))"
    exit 0
  fi
  sleep 1
done
tail -n 20 "$STATE"/log/slurm*.log >&2 || true
on "$host" squeue >&2 || true
die "nodes not all idle after 60 s (states: ${states:-none}; sinfo -R says why)"
