#!/usr/bin/env bash
# Attention-variant ablation on the demo data: the same J-DiT (recipes/ablation/attention.yaml) trained for the same
# steps with each attention core / token mixer, then `lavinkit eval` on held-out pairs of six tasks for each, and a
# summary table (validation flow loss, PSNR / SSIM of the predictions, seconds per step).
# Needs the quickstart's demo data, ST-VAE and latents (stages 1-3 of recipes/quickstart/run.sh); set
# SKIP_PREP=1 when runs/quickstart_stvae and runs/quickstart_latents already exist.
# Variants (name=overrides): flex is left out on CPU (FlexAttention has no CPU backward); on a GPU add
#   "flex_pair_local=attention_core: flex, attention_core_options: {rule: pair_local}" with --trainer.accelerator gpu.
# STEPS=150 shortens every run (max_steps, one-cycle length and epoch length together); QUERIES sets the eval
# queries per task (default 4); EXTRA_FIT_ARGS are appended to every `lavinkit fit`.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAVINKIT="${LAVINKIT:-lavinkit}"
PYTHON="${PYTHON:-python}"
BASE="hidden_size: 192, depth: 4, num_heads: 4, kv_group: 2"
VARIANTS=(
    "sdpa="
    "infini=attention_core: infini"
    "diffussm=token_mixer: diffussm"
    "pair_local=attention_core: pair_local"
    "factorized=attention_core: factorized"
    "infini_delta=attention_core: infini, attention_core_options: {update: delta}"
)
STEP_ARGS=()
if [ -n "${STEPS:-}" ]; then
    STEP_ARGS=(--trainer.max_steps "$STEPS" --model.init_args.lr_scheduler.init_args.total_steps "$STEPS"
               --data.init_args.steps_per_epoch "$STEPS")
fi
if [ -n "${ONLY:-}" ]; then  # e.g. ONLY="sdpa infini" runs a subset
    keep=(); for v in "${VARIANTS[@]}"; do [[ " $ONLY " == *" ${v%%=*} "* ]] && keep+=("$v"); done; VARIANTS=("${keep[@]}")
fi

if [ -z "${SKIP_PREP:-}" ]; then
    "$LAVINKIT" data demo --out demo_data
    "$LAVINKIT" fit --config recipes/quickstart/stvae.yaml
    for split in train val; do
        "$LAVINKIT" encode --data "demo_data/$split/images-*.tar" --out "runs/quickstart_latents/$split" \
            --vae runs/quickstart_stvae/checkpoints/last.ckpt --mode mean
    done
fi

for entry in "${VARIANTS[@]}"; do
    name="${entry%%=*}"; extra="${entry#*=}"
    overrides="{$BASE${extra:+, $extra}}"
    out="runs/ablation_attention/$name"
    rm -rf "$out"
    echo "== $name: $overrides"
    "$LAVINKIT" fit --config recipes/ablation/attention.yaml \
        --model.init_args.dit_overrides "$overrides" \
        --trainer.default_root_dir "$out" "${STEP_ARGS[@]}" ${EXTRA_FIT_ARGS:-}
    "$LAVINKIT" eval --checkpoint "$out/checkpoints/last.ckpt" --task-folder demo_data/tasks \
        --tasks "[colorization, denoising, super_resolution, inpainting, edge_detection, horizontal_flip]" \
        --queries-per-task "${QUERIES:-4}" --num-pairs 2 --size 64x64 --steps 20 --guidance-scale 1.5 --encode-mode mean \
        --seeds "[0]" --out "$out/eval" --progress false
done

"$PYTHON" recipes/ablation/summarize.py runs/ablation_attention
