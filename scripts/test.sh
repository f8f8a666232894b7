#!/usr/bin/env bash
# Installs everything the tests need (Debian packages, Python packages), then runs the suite.
#   bash scripts/test.sh            # the whole default suite (what CI runs)
#   bash scripts/test.sh --slow     # also the slow tests
#   bash scripts/test.sh -k fit     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in slurmctld slurmd slurm-client munge iproute2; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

export DS_BUILD_OPS=0 DS_ACCELERATOR=cpu
python3 -m pip install -q --disable-pip-version-check -e ".[bench,test,launchers]"

markers=()
if [ "${1:-}" = "--slow" ]; then
  shift
  markers=(-m "not gpu")
fi
exec python3 -m pytest "${markers[@]}" "$@"
