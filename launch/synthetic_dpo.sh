#!/usr/bin/env bash
# On-policy DPO on the synthetic sort task, judged by its oracle (the usual RLHF recipe):
#   SFT on the chosen responses of N_TRAIN preference pairs (configs/synthetic.py:sft on
#   `python -m pit.data.synthetic --files sft_chosen`) -> N samples per training / held-out prompt
#   -> oracle best-vs-worst pairs -> DPO (configs/dpo.py:onpolicy) -> oracle score of
#   greedy and sampled responses before and after, in WORKDIR/dpo/dpo_summary.json.
# Usage: launch/synthetic_dpo.sh WORKDIR [--config.* flags for the DPO run]
# Env: N_TRAIN (20000 pairs' chosen responses); NUM_SAMPLES (4); PROMPTS_TRAIN /
# PROMPTS_EVAL (the task's shipped prompt files); SFT_FLAGS / GEN_FLAGS: extra flags for
# the SFT run (and model shape) / both generate runs (the smoke test shrinks everything).
# Every step is skipped when its output exists, so a rerun resumes where it stopped
# (the SFT and DPO runs resume from their own checkpoints).
set -euo pipefail
W=${1:?usage: launch/synthetic_dpo.sh WORKDIR [--config.* flags for DPO]}
shift
N=${NUM_SAMPLES:-4}
read -r -a SFT_X <<< "${SFT_FLAGS:-}"
read -r -a GEN_X <<< "${GEN_FLAGS:-}"
PY=${PYTHON:-python}
SFT=(--config=configs/synthetic.py:sft --workdir="$W/sft"
     --config.data.train_path="$W/data/sft_chosen.jsonl" "${SFT_X[@]}")

if [ ! -f "$W/data/sft_chosen.jsonl" ]; then
  "$PY" -m pit.data.synthetic --out_dir="$W/data" --files=sft_chosen --n_train="${N_TRAIN:-20000}"
fi
if [ ! -f "$W/sft/sft_summary.json" ]; then
  "$PY" -m pit.main "${SFT[@]}"
fi
for split in train eval; do
  out="$W/sft/samples_$split.jsonl"
  [ -f "$out" ] && continue
  prompts=${PROMPTS_TRAIN:-data/synthetic/ift.jsonl} seed=0
  [ "$split" = eval ] && prompts=${PROMPTS_EVAL:-data/synthetic/prompts_eval.jsonl} seed=1
  "$PY" -m pit.main "${SFT[@]}" --config.pipeline=generate --config.generate.prompts_path="$prompts" \
    --config.generate.num_samples="$N" --config.generate.temperature=1.0 \
    --config.generate.seed="$seed" --config.generate.batch_size=128 \
    --config.generate.output="samples_$split.jsonl.tmp" "${GEN_X[@]}"
  mv "$out.tmp" "$out"
done
for split in train eval; do
  "$PY" -m pit.data.synthetic pairs --generations "$W/sft/samples_$split.jsonl" \
    --out "$W/pairs_$split.jsonl"
done
"$PY" -m pit.main --config=configs/dpo.py:onpolicy --workdir="$W/dpo" \
  --config.data.train_path="$W/pairs_train.jsonl" --config.data.eval_path="$W/pairs_eval.jsonl" \
  --config.dpo.init_checkpoint="$W/sft" "$@"
