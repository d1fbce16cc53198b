#!/usr/bin/env bash
# Bring up a throw-away single-node SLURM cluster on localhost, with accounting (slurmdbd + MariaDB on a
# unix socket, no networking), for CI and local tests of the slurm profile.
#
#   ci/slurm/install.sh                   # once: the Debian packages (root)
#   ci/slurm/start.sh [STATE_DIR]         # prints the environment to use, e.g. `eval "$(ci/slurm/start.sh)"`
#   export SLURM_CONF=STATE_DIR/slurm.conf; sbatch/squeue/sacct/snakemake --executor slurm ...
#   ci/slurm/stop.sh [STATE_DIR]          # kills exactly the daemons started here, by PID
#
# Everything (configs, spool, logs, database, munge key and socket, PID files) lives in STATE_DIR
# (default /tmp/ci-slurm); nothing under /etc is touched, so it coexists with a system installation as
# long as the ports (SLURM_CI_PORT_BASE, default 6817..6819) are free. Daemons run as root
# (SlurmUser=root; MariaDB as mysql). Startup takes a few seconds.
# Facts this relies on: the machine's hostname need not resolve, so the node is called `localhost`
# (NodeAddr=127.0.0.1, slurmd -N localhost) with the hardware line of `slurmd -C`; no cgroups in
# containers, hence proctrack/linuxproc + task/none; without slurmdbd `sacct` fails and the snakemake
# executor plugin's status polling (sacct) never finishes, hence the database.
set -euo pipefail

STATE=$(realpath -m "${1:-${SLURM_CI_DIR:-/tmp/ci-slurm}}")
PORT=${SLURM_CI_PORT_BASE:-6817}
CLUSTER=${SLURM_CI_CLUSTER:-ci}

log() { echo "ci/slurm/start.sh: $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$STATE"/log/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
    exit 1
}

for exe in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr sinfo; do
    command -v "$exe" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v "$exe" >/dev/null 2>&1 || die "$exe not found: run ci/slurm/install.sh first"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as SlurmUser=root)"
if [ -f "$STATE/pids" ]; then
    die "$STATE/pids exists: a cluster may still be running; run ci/slurm/stop.sh $STATE first"
fi

# snakemake-executor-plugin-slurm-jobstep (0.6.1) strips every SLURM_* variable but the job's identity
# before its inner `srun`, SLURM_CONF included: inside a job, srun only finds the default
# /etc/slurm/slurm.conf. start.sh links it there (stop.sh removes exactly this link) and refuses to
# shadow a real one or another running test cluster's.
ETC_CONF=${SLURM_CI_ETC_CONF:-/etc/slurm/slurm.conf}
if [ -L "$ETC_CONF" ] && [ -e "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" != "$STATE/slurm.conf" ]; then
    die "$ETC_CONF links to $(readlink "$ETC_CONF") (another test cluster running?); stop it first"
elif [ -e "$ETC_CONF" ] && [ ! -L "$ETC_CONF" ]; then
    die "$ETC_CONF exists (a real SLURM installation?): this script will not shadow it"
fi

mkdir -p "$STATE"/{log,ctld,spool,munge,mysql}
chmod 755 "$STATE" "$STATE/munge"
: >"$STATE/pids"

# Start one daemon in the foreground of a background subshell and record its PID (stop.sh kills these).
spawn() {
    local name=$1; shift
    setsid "$@" >>"$STATE/log/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$STATE/pids"
}
wait_for() {  # wait_for DESCRIPTION SECONDS COMMAND...
    local what=$1 secs=$2; shift 2
    local end=$((SECONDS + secs))
    while ((SECONDS < end)); do
        if timeout 5 "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "timed out after ${secs}s waiting for $what"
}

# --- munge: own key and socket -------------------------------------------------------------------
MUNGE_SOCK="$STATE/munge/munge.socket.2"
if [ ! -f "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 400 "$STATE/munge/munge.key"
spawn munged munged -F --force --key-file="$STATE/munge/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/log/munged.log"
wait_for munged 10 munge -S "$MUNGE_SOCK" -n

# --- MariaDB on a unix socket (its log/pid/socket dir must belong to mysql) -----------------------
DB="$STATE/mysql"
DB_SOCK="$DB/run/mysqld.sock"
mkdir -p "$DB/data" "$DB/run"
chown -R mysql:mysql "$DB"
if [ ! -d "$DB/data/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --skip-test-db \
        --auth-root-authentication-method=socket >"$STATE/mariadb-install.txt" 2>&1 \
        || die "mariadb-install-db failed (see $STATE/mariadb-install.txt)"
fi
spawn mariadbd mariadbd --no-defaults --user=mysql --datadir="$DB/data" --socket="$DB_SOCK" \
    --skip-networking --pid-file="$DB/run/mariadbd.pid" --log-error="$DB/run/mariadbd.err" \
    --innodb-buffer-pool-size=32M --innodb-log-file-size=8M --skip-log-bin
wait_for mariadbd 60 mariadb --no-defaults -S "$DB_SOCK" -u root -e "SELECT 1"

# --- configs ---------------------------------------------------------------------------------------
NODE_LINE=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
cat >"$STATE/slurm.conf" <<EOF
# Generated by ci/slurm/start.sh: a single-node test cluster on localhost.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/linux
# keep --comment (the snakemake plugin writes rule_<name>_wildcards_<...> there) for sacct -o Comment
AccountingStoreFlags=job_comment
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
MinJobAge=600
# Time limits as tests/test_slurm.py needs them: a job is killed at its limit, not OverTimeLimit minutes
# later, with SIGKILL 5 s after its SIGTERM. slurmctld checks limits every 30 s, so a 1-minute job (the
# smallest limit) ends 60-90 s after it started, in state TIMEOUT.
OverTimeLimit=0
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 $NODE_LINE State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$STATE/slurmdbd.conf" <<EOF
# Generated by ci/slurm/start.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/slurmdbd.conf"
export SLURM_CONF="$STATE/slurm.conf"
if [ -L "$ETC_CONF" ] || [ ! -e "$ETC_CONF" ]; then
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -sfn "$SLURM_CONF" "$ETC_CONF"
    echo "$ETC_CONF" >"$STATE/etc-link"
fi

# --- slurmdbd (libmariadb finds the socket through MYSQL_UNIX_PORT) ---------------------------------
spawn slurmdbd env MYSQL_UNIX_PORT="$DB_SOCK" slurmdbd -D  # finds slurmdbd.conf beside $SLURM_CONF
wait_for slurmdbd 30 sacctmgr -n show cluster
# --- slurmctld (registers the cluster with slurmdbd) and slurmd -------------------------------------
spawn slurmctld slurmctld -D -i -f "$SLURM_CONF"
wait_for slurmctld 30 scontrol ping
spawn slurmd slurmd -D -N localhost -f "$SLURM_CONF"
wait_for "node localhost to become idle" 30 \
    bash -c 'sinfo -h -n localhost -o %T | grep -qE "^(idle|mixed|allocated)"'
wait_for "cluster $CLUSTER in the accounting database" 30 \
    bash -c "sacctmgr -n -P show cluster format=cluster | grep -qx $CLUSTER"

log "cluster '$CLUSTER' up: $(sinfo -h -o '%P %D %T %c CPUs %m MB' | tr '\n' ' ')(state in $STATE)"
echo "export SLURM_CONF=$SLURM_CONF"
