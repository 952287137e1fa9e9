#!/usr/bin/env bash
# The old helper's commands on the new engine:
#   scripts/run_batch.sh submit [flags]        submit one batch and print its id
#   scripts/run_batch.sh check BATCH_ID [flags] show a batch, apply it if finished
#   scripts/run_batch.sh run [flags]           run until stopped (Ctrl-C stops gracefully)
# Flags go to `python -m engine <command>` (--job, --dsn/--db, --batch-size, ...).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${here}/.venv/bin/python"
[ -x "$python" ] || python=python3
cmd="${1:-}"
case "$cmd" in
    submit|check|run) shift; exec "$python" -m engine "$cmd" "$@" ;;
    *) echo "usage: $0 submit|check BATCH_ID|run [flags]" >&2; exit 2 ;;
esac
