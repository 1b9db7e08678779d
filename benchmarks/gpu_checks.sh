#!/usr/bin/env bash
# The GPU checks of the scale-and-speed work, on ONE CUDA device, in one script (figures to $OUT, default ./gpu_checks):
#   1. J-DiT 1b preset, bf16, 4 context pairs of 32x32 latents (10 frames x 256 tokens), `lavinkit bench train` under
#      plain, FSDP, FSDP2 (ModelParallelStrategy), DeepSpeed ZeRO-2 and ZeRO-3 (one process each): MFU, step time,
#      peak memory;
#   2. each strategy once with EMA, a checkpoint, an exact resume and `lavinkit export` (tests/lit/dist_resume_script.py,
#      tiny J-DiT, 1 process);
#   3. official-3b with activation checkpointing of every block (memory, MFU);
#   4. the ST-VAE official preset, stage-2 recipe step in bf16;
#   5. 20-step guided sampling latency of official-3b at 512x512 (64x64 latents) with 4 pairs.
# DeepSpeed parts are skipped (and say so) when the deepspeed package is missing.
#   STEPS=30 OUT=/tmp/gpu bash benchmarks/gpu_checks.sh
# With DRY_RUN=1 it runs the same commands on the CPU with tiny shapes (a check of the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_checks}
STEPS=${STEPS:-30}
PY=${PY:-python}
mkdir -p "$OUT/frag"
status=0

if [ "${DRY_RUN:-0}" = 1 ]; then
  DEV="--device cpu --precision 32-true --matmul_peak false"
  JDIT=recipes/jdit/tiny.yaml; J3B=recipes/jdit/tiny.yaml; VAE=recipes/stvae/tiny_stage2.yaml
  SHAPE="--latent 4 --num_context 1 --batch 1"; SHAPE3B="--latent 4 --num_context 1 --batch 1"
  VAESHAPE="--batch 1 --size 32 --frames 5"; SAMPLESHAPE="--latent 4 --num_context 1 --batch 1"
  STEPS=2; ACC=cpu; STRATEGIES="plain fsdp2"
else
  DEV="--device cuda --precision bf16-mixed"
  JDIT=recipes/jdit/jdit_1b.yaml; J3B=recipes/jdit/official_3b.yaml; VAE=recipes/stvae/stage2.yaml
  SHAPE="--latent 32 --num_context 4 --batch 4"; SHAPE3B="--latent 32 --num_context 4 --batch 1"
  VAESHAPE="--batch 1"; SAMPLESHAPE="--latent 64 --num_context 4 --batch 1"
  ACC=gpu; STRATEGIES="plain fsdp fsdp2 deepspeed2 deepspeed3"
fi
has_deepspeed=$($PY -c "import deepspeed" >/dev/null 2>&1 && echo 1 || echo 0)

cat > "$OUT/frag/fsdp.yaml" <<'EOF'
trainer:
  strategy:
    class_path: lightning.pytorch.strategies.FSDPStrategy
    init_args:
      auto_wrap_policy: [lavinkit.models.jdit.block.JointBlock]
      state_dict_type: sharded
EOF
cat > "$OUT/frag/fsdp2.yaml" <<'EOF'
trainer:
  strategy:
    class_path: lightning.pytorch.strategies.ModelParallelStrategy
    init_args: {data_parallel_size: 1, tensor_parallel_size: 1}
EOF
for stage in 2 3; do
  printf "trainer:\n  strategy:\n    class_path: lightning.pytorch.strategies.DeepSpeedStrategy\n    init_args: {stage: %s}\n" \
    "$stage" > "$OUT/frag/deepspeed$stage.yaml"
done
# the 1b recipe checkpoints every block through its config; the strategy runs compare the plain step
printf "model:\n  init_args:\n    dit_overrides: {activation_checkpointing: false}\n" > "$OUT/frag/no_ac.yaml"
printf "model:\n  init_args:\n    activation_checkpointing: true\n" > "$OUT/frag/ac.yaml"

run() {  # name, command...
  local name=$1; shift
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then tail -n 14 "$OUT/$name.log"; else echo "FAILED ($name), see $OUT/$name.log"; tail -n 20 "$OUT/$name.log"; status=1; fi
}

for s in $STRATEGIES; do
  case $s in deepspeed*) [ "$has_deepspeed" = 1 ] || { echo "== $s: skipped (pip install deepspeed)"; continue; } ;; esac
  extra=(); [ "$s" != plain ] && extra=(--config "$OUT/frag/$s.yaml" --strategy true)
  run "bench_1b_$s" $PY -m lavinkit.cli bench train --config "$JDIT" --config "$OUT/frag/no_ac.yaml" "${extra[@]}" \
      $DEV $SHAPE --steps "$STEPS" --warmup 3 --json "$OUT/bench_1b_$s.json"
  [ "$s" = plain ] && continue
  run "resume_export_$s" env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" $PY tests/lit/dist_resume_script.py jdit "$s" \
      "$OUT/resume_$s" 1 "$ACC"
done
run bench_3b_ac $PY -m lavinkit.cli bench train --config "$J3B" --config "$OUT/frag/ac.yaml" $DEV $SHAPE3B \
    --steps "$STEPS" --warmup 3 --json "$OUT/bench_3b_ac.json"
run bench_stvae_stage2 $PY -m lavinkit.cli bench train --config "$VAE" $DEV $VAESHAPE --steps "$STEPS" --warmup 3 \
    --json "$OUT/bench_stvae_stage2.json"
run sample_3b $PY -m lavinkit.cli bench train --config "$J3B" --mode sample $DEV $SAMPLESHAPE --steps 3 --warmup 1 \
    --json "$OUT/sample_3b.json"
exit $status
