#!/usr/bin/env bash
# Run a PIT config on every worker of a Cloud TPU VM slice (a pod slice is one TPU VM with
# several workers; JAX finds the coordinator and the process ids there itself).
#
#   launch/tpu_pod.sh --name=pit-v5e --zone=us-west4-a --accelerator=v5litepod-16 \
#       [--project=P] [--version=v2-alpha-tpuv5-lite] [--reuse] [--keep] [--dry_run] \
#       -- configs/sft.py:llama7b gs://bucket/run [--config.x=y ...]
#
# Steps: (1) create the slice (skipped with --reuse: an existing slice of that name is used);
# (2) copy this checkout's tracked files (git archive of HEAD plus uncommitted changes, no
# venv, no runs) to every worker; (3) install PIT with jax[tpu] on every worker; (4) run
# launch/multihost.sh on every worker at once, each worker's output kept in
# run-<worker>.log on that worker; (5) gather the logs into ./logs/<name>/; (6) delete the
# slice unless --keep or --reuse (a slice you brought is never deleted). The workdir should be
# a gs:// bucket every worker can reach (Orbax writes the checkpoints jointly).
# --dry_run prints the exact commands (shell-quoted, one per line) and runs none.
set -euo pipefail
NAME="" ZONE="" ACCEL="" PROJECT="" VERSION="v2-alpha-tpuv5-lite" REUSE=0 KEEP=0 DRY=0
usage() { sed -n '2,7p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCEL="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --reuse) REUSE=1 ;;
    --keep) KEEP=1 ;;
    --dry_run) DRY=1 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done
[ -n "$NAME" ] || { echo "tpu_pod.sh: --name is required" >&2; usage; }
[ -n "$ZONE" ] || { echo "tpu_pod.sh: --zone is required" >&2; usage; }
[ "$REUSE" = 1 ] || [ -n "$ACCEL" ] || { echo "tpu_pod.sh: --accelerator is required unless --reuse" >&2; usage; }
[ $# -ge 2 ] || { echo "tpu_pod.sh: after --, give CONFIG WORKDIR [flags]" >&2; usage; }
CONFIG="$1" WORKDIR="$2"; shift 2
EXTRA=("$@")

run() {  # print (dry run) or execute one command
  if [ "$DRY" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[ -n "$PROJECT" ] && WHERE+=(--project="$PROJECT")
REPO="$(cd "$(dirname "$0")/.." && pwd)"
ARCHIVE="$(mktemp -u /tmp/pit-XXXXXX).tar.gz"
# jax[tpu] at the version setup.py pins (its libtpu must match jaxlib)
JAX_VERSION="$(sed -nE 's/.*"jax==([0-9.]+)".*/\1/p' "$REPO/setup.py" | head -n 1)"
REMOTE_ARGS="$(printf '%q ' "$CONFIG" "$WORKDIR" "${EXTRA[@]}")"

cleanup() {
  if [ "$KEEP" = 0 ] && [ "$REUSE" = 0 ]; then
    run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

if [ "$REUSE" = 0 ]; then
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCEL" --version="$VERSION"
  [ "$DRY" = 1 ] || trap cleanup EXIT
fi
# (2) the code: tracked files at HEAD with the working tree's changes (git stash create)
run bash -c "cd $(printf '%q' "$REPO") && git archive --format=tar.gz -o $(printf '%q' "$ARCHIVE") \$(git stash create || echo HEAD)"
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME":pit.tar.gz "${WHERE[@]}" --worker=all
# (3) install
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
  --command="rm -rf pit && mkdir pit && tar xzf pit.tar.gz -C pit && cd pit && python3 -m pip install -q -e . 'jax[tpu]==$JAX_VERSION'"
# (4) run on every worker at once (JAX's TPU cluster detection gives coordinator and ids)
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all \
  --command="cd pit && launch/multihost.sh $REMOTE_ARGS 2>&1 | tee run-\$(hostname).log"
# (5) gather the logs
run mkdir -p "logs/$NAME"
run "${GCLOUD[@]}" scp "$NAME:pit/run-*.log" "logs/$NAME/" "${WHERE[@]}" --worker=all
# (6) clean up
if [ "$DRY" = 1 ]; then cleanup; fi
