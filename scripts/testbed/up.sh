#!/usr/bin/env bash
# Test hosts on this one Linux machine, for the tests marked `multinode`
# (tests/system/test_multinode.py): N hosts sop-n1..sop-nN (default 3), each a network namespace
# with its own address, its own host name (a UTS namespace) and its own mounts, joined by
# a bridge that lives in a namespace of its own (no address of this machine's is on it,
# so traffic stays between the test hosts). Each host runs Debian's sshd; Hydra reaches
# the others through real ssh ($STATE/ssh, written here), with keys made here.
#   scripts/testbed/up.sh [N]      (root; idempotent)   scripts/testbed/down.sh
#   scripts/testbed/on HOST CMD...  runs CMD on a test host (root)
# $STATE/local is each host's own folder: sop-n1 sees this machine's, every other host an
# empty tmpfs of its own (for tests of a host that cannot see a path). What it starts is
# listed in $STATE/started, for down.sh, which stops only that.
set -euo pipefail

N=${1:-3}
STATE=/var/lib/sop-testbed
NET=10.213.19             # 10.213.19.0/24: the test hosts' addresses, .1 to .N
SWITCH=soptb-sw           # the namespace holding the bridge
die() { echo "up.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root: it creates network namespaces and starts sshd"
[[ "$N" =~ ^[1-9]$ ]] || die "the number of hosts must be 1 to 9, not '$N'"
for tool in ip unshare nsenter ssh-keygen; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian: iproute2, util-linux, openssh-client)"
done
if [ ! -x /usr/sbin/sshd ]; then
  command -v apt-get >/dev/null || die "no sshd here and no apt-get to install it (Debian only)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed (no network to the Debian mirror?)"
  apt-get install -y -qq --no-install-recommends openssh-server >/dev/null \
    || die "apt-get install openssh-server failed"
fi
if ip -4 addr | grep -q "inet $NET\."; then
  die "$NET.0/24 is already used on this machine; the test hosts need it to themselves"
fi

mkdir -p "$STATE/local" /run/sshd
touch "$STATE/started"
started() { grep -qxF "$*" "$STATE/started" || echo "$*" >> "$STATE/started"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Keys: one host key for every host, one client key for root; made once.
[ -s "$STATE/host_key" ] || ssh-keygen -q -t ed25519 -N '' -C sop-testbed-host -f "$STATE/host_key"
[ -s "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C sop-testbed -f "$STATE/id_ed25519"
cp "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
chmod 600 "$STATE/authorized_keys"
: > "$STATE/hosts.new"; : > "$STATE/known_hosts.new"
echo "127.0.0.1 localhost" > "$STATE/etc_hosts.new"
for i in $(seq "$N"); do
  echo "sop-n$i" >> "$STATE/hosts.new"
  echo "$NET.$i sop-n$i" >> "$STATE/etc_hosts.new"
  echo "sop-n$i,$NET.$i $(cut -d' ' -f1-2 "$STATE/host_key.pub")" >> "$STATE/known_hosts.new"
done
for f in hosts etc_hosts known_hosts; do mv "$STATE/$f.new" "$STATE/$f"; done
# The client side of every ssh between test hosts: a lost host is given up after
# ServerAliveInterval x ServerAliveCountMax = 6 s without an answer (ssh exits 255).
cat > "$STATE/ssh_config" <<CONF
Host *
  User root
  IdentityFile $STATE/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
  ServerAliveInterval 2
  ServerAliveCountMax 3
  LogLevel ERROR
CONF
cat > "$STATE/ssh" <<WRAP
#!/bin/sh
# ssh between the test hosts (Hydra: mpiexec -launcher ssh -launcher-exec $STATE/ssh).
exec /usr/bin/ssh -F $STATE/ssh_config "\$@"
WRAP
chmod 755 "$STATE/ssh"

[ -e "/run/netns/$SWITCH" ] || ip netns add "$SWITCH"
started netns "$SWITCH"
ip -n "$SWITCH" link show br0 >/dev/null 2>&1 || ip -n "$SWITCH" link add br0 type bridge
ip -n "$SWITCH" link set br0 up

for i in $(seq "$N"); do
  host=sop-n$i ns=soptb-n$i dir=$STATE/n$i
  mkdir -p "$dir" "/etc/netns/$ns"
  # `ip netns exec` puts /etc/netns/NS/hosts over /etc/hosts: each host resolves the others.
  cp "$STATE/etc_hosts" "/etc/netns/$ns/hosts"
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  started netns "$ns"
  if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
    ip link add "tb$i" netns "$SWITCH" type veth peer name eth0 netns "$ns"
  fi
  ip -n "$SWITCH" link set "tb$i" master br0 up
  ip -n "$ns" addr replace "$NET.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  cat > "$dir/sshd_config" <<CONF
ListenAddress $NET.$i
HostKey $STATE/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
# A client gone silent is dropped after 6 s: its session and what runs in it end.
ClientAliveInterval 2
ClientAliveCountMax 3
MaxStartups 100
LogLevel ERROR
CONF
  if ! alive "$dir/sshd.pid"; then
    rm -f "$dir/sshd.pid"
    # sshd, and all that runs through it, in the host's network, UTS and mount namespaces.
    if [ "$i" = 1 ]; then local_mount=true; else local_mount="mount -t tmpfs -o size=64m,mode=755 sop-local-$host $STATE/local"; fi
    # Its own /dev/shm, as a host has: what MPI leaves there stays on the host, and goes with it.
    shm="mount -t tmpfs -o size=1g,mode=1777 sop-shm-$host /dev/shm"
    ip netns exec "$ns" unshare --uts --mount --propagation private sh -c \
      "hostname $host && $local_mount && $shm && exec /usr/sbin/sshd -f $dir/sshd_config" \
      || die "sshd on $host did not start"
    for _ in $(seq 50); do [ -s "$dir/sshd.pid" ] && break; sleep 0.1; done
    alive "$dir/sshd.pid" || die "sshd on $host did not start (no pid in $dir/sshd.pid)"
  fi
  started sshd "$dir/sshd.pid"
done

# Ready once every host reaches every other through ssh.
for i in $(seq "$N"); do
  for j in $(seq "$N"); do
    got=$("$(dirname "$0")/on" "sop-n$i" "$STATE/ssh" "sop-n$j" hostname 2>&1) \
      || die "sop-n$i cannot ssh to sop-n$j: $got"
    [ "$got" = "sop-n$j" ] || die "sop-n$i reached '$got' for sop-n$j"
  done
done
echo "up.sh: $N test hosts up: $(tr '\n' ' ' < "$STATE/hosts")($NET.1-$N, hosts file $STATE/hosts)"
