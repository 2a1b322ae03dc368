#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (tansu, the S3 server, PostgreSQL). `--clean` also deletes S3 data.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${BLIP2IDC_STATE_DIR:-$here/.state}"
sudo_maybe() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
for svc in tansu s3 s3s; do
  if [ -f "$state/$svc.pid" ]; then
    kill "$(cat "$state/$svc.pid")" 2>/dev/null && echo "[stop] $svc stopped"
    rm -f "$state/$svc.pid"
  fi
done
pgver="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
[ -n "$pgver" ] && sudo_maybe pg_ctlcluster "$pgver" main stop 2>/dev/null && echo "[stop] postgresql stopped"
[ "${1:-}" = "--clean" ] && rm -rf "$state/s3" && echo "[stop] S3 data removed"
exit 0
