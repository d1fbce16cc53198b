#!/usr/bin/env bash
# Install the Debian packages for a single-node SLURM cluster on localhost (used by tests/test_slurm.py
# through ci/slurm/start.sh). Idempotent: does nothing when every package is already installed.
# Needs root (or sudo) and Debian/Ubuntu's apt. Daemons are NOT started here (start.sh does that, by PID).
set -euo pipefail
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "ci/slurm/install.sh: all packages present (${PKGS[*]})"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Keep the packages' own service units from starting daemons (containers have no systemd anyway).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "ci/slurm/install.sh: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
echo "ci/slurm/install.sh: done"
