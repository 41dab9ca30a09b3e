#!/usr/bin/env bash
# Multi-host launch: run this same command on every host of a TPU pod slice or GPU cluster.
# JAX discovers the coordinator on TPU pods / SLURM itself; elsewhere set it explicitly:
#   COORDINATOR=host0:1234 NUM_PROCESSES=4 PROCESS_ID=$i launch/multihost.sh configs/sft.py:llama7b gs://bucket/run
# PYTHON (default python3) is the interpreter. Each process reads its slice of every global
# batch; checkpoints are written jointly by Orbax. Pod / cluster wrappers: launch/tpu_pod.sh,
# launch/slurm.sbatch.
set -euo pipefail
CONFIG=${1:?config, e.g. configs/sft.py:llama7b}
WORKDIR=${2:?workdir (shared by all hosts)}
shift 2
ARGS=(--config="$CONFIG" --workdir="$WORKDIR" --config.distributed.enabled=True)
[ -n "${COORDINATOR:-}" ] && ARGS+=(--config.distributed.coordinator_address="$COORDINATOR")
[ -n "${NUM_PROCESSES:-}" ] && ARGS+=(--config.distributed.num_processes="$NUM_PROCESSES")
[ -n "${PROCESS_ID:-}" ] && ARGS+=(--config.distributed.process_id="$PROCESS_ID")
exec "${PYTHON:-python3}" -m pit.main "${ARGS[@]}" "$@"
