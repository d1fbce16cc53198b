#!/usr/bin/env bash
# Tear down the cluster of ci/slurm/start.sh [STATE_DIR]: cancel its jobs, then stop exactly the daemons
# it started (PIDs recorded in STATE_DIR/pids), newest first: SIGTERM, then SIGKILL after a grace period.
# Never kills by name. Idempotent; `--purge` also deletes STATE_DIR.
set -uo pipefail
PURGE=0
ARGS=()
for a in "$@"; do
    case "$a" in --purge) PURGE=1 ;; *) ARGS+=("$a") ;; esac
done
STATE=$(realpath -m "${ARGS[0]:-${SLURM_CI_DIR:-/tmp/ci-slurm}}")
PIDS="$STATE/pids"
log() { echo "ci/slurm/stop.sh: $*" >&2; }

if [ -f "$PIDS" ]; then
    if [ -f "$STATE/slurm.conf" ] && command -v scancel >/dev/null 2>&1; then
        SLURM_CONF="$STATE/slurm.conf" timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
    fi
    # newest first: slurmd, slurmctld, slurmdbd, mariadbd, munged
    mapfile -t lines < <(tac "$PIDS")
    for line in "${lines[@]}"; do
        name=${line% *}; pid=${line##* }
        [[ "$pid" =~ ^[0-9]+$ ]] || continue
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        # reap what the daemon left in its own session (it was started with setsid: sid == pid),
        # e.g. slurmstepd of a cancelled job
        for p in $(ps -o pid= -s "$pid" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        log "stopped $name ($pid)"
    done
    rm -f "$PIDS"
else
    log "no $PIDS: nothing to stop"
fi
# the /etc/slurm/slurm.conf link of start.sh, only if it still points into STATE_DIR
if [ -f "$STATE/etc-link" ]; then
    link=$(cat "$STATE/etc-link")
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$STATE/slurm.conf" ]; then rm -f "$link"; fi
    rm -f "$STATE/etc-link"
fi
if [ "$PURGE" -eq 1 ] && [ -d "$STATE" ]; then rm -rf "$STATE"; fi
exit 0
