#!/usr/bin/env bash
# A one-node SLURM on this machine for the scheduler tests (marker `slurm`): Debian's slurm-wlm and munge, daemons
# started without cgroups (proctrack/linuxproc, task/none), as root. `scripts/slurm.sh start` installs the packages
# when missing (root + apt-get), writes /etc/slurm/slurm.conf (only when absent or written by this script before),
# starts munged, slurmctld and slurmd, and waits until the node is idle; `stop` stops the daemons; `status` prints
# `sinfo`. Runtime files live under /var/lib/alkit-slurm. Safe to run again.
set -euo pipefail

STATE=/var/lib/alkit-slurm
CONF=/etc/slurm/slurm.conf
MARK='# written by aiida-alkit scripts/slurm.sh'
log() { printf '[alkit-slurm] %s\n' "$*" >&2; }

install_packages() {
    local missing=()
    for pkg in slurm-wlm munge; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "missing Debian packages: ${missing[*]} (run: sudo apt-get install -y ${missing[*]})"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        log "$CONF exists and was not written by this script: using it as it is"
        return 0
    fi
    local host cpus memory
    host="$(hostname -s)"
    cpus="$(nproc)"
    memory="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
    mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
    cat >"$CONF" <<CONF
$MARK
ClusterName=alkit
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# time limits are checked every 10 s and a timed-out job gets 5 s between SIGTERM and SIGKILL (tests wait less)
InactiveLimit=0
KillWait=5
OverTimeLimit=0
MinJobAge=300
SchedulerParameters=sched_interval=2
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

running() { pgrep -x "$1" >/dev/null; }

start() {
    install_packages
    write_config
    mkdir -p /run/munge "$STATE"
    if ! running munged; then
        chown -R munge:munge /run/munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
        if id munge >/dev/null 2>&1; then
            runuser -u munge -- /usr/sbin/munged
        else
            /usr/sbin/munged --force
        fi
    fi
    running slurmctld || /usr/sbin/slurmctld
    running slurmd || /usr/sbin/slurmd
    for _ in $(seq 60); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            log "SLURM is up: $(sinfo -h -o '%P %D %t %c')"
            return 0
        fi
        scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
        sleep 1
    done
    log "SLURM did not come up; logs in $STATE"
    sinfo >&2 || true
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        pkill -x "$daemon" 2>/dev/null || true
    done
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
