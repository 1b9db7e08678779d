#!/usr/bin/env bash
# The quickstart: the whole LaVin-DiT pipeline on the built-in demo data, on CPU (about 10 minutes on 2 cores).
# Every stage is an ordinary command with an ordinary recipe; open them, change them, run them one by one.
#
#   1. demo data       lavinkit data demo        -> demo_data/{train,val}/*.tar, demo_data/tasks/<task>/
#   2. ST-VAE stage 1  recipes/stvae/tiny_stage1.yaml (images)          -> runs/tiny_stvae_stage1/
#   3. ST-VAE stage 2  recipes/stvae/tiny_stage2.yaml (images + clips)  -> runs/tiny_stvae_stage2/
#   4. J-DiT           recipes/jdit/tiny.yaml (flow matching on in-context pairs, frozen stage-2 VAE)
#   5. inference       lavinkit infer on held-out pairs of several tasks -> runs/quickstart/results_grid.png
#
# Re-running starts the training stages afresh (their previous outputs in runs/ are replaced).
set -euo pipefail
cd "$(dirname "$0")/../.."
LAVINKIT="${LAVINKIT:-lavinkit}"

echo "== 1/5 demo data"
"$LAVINKIT" data demo --out demo_data

for stage in tiny_stvae_stage1 tiny_stvae_stage2 tiny_jdit quickstart; do rm -rf "runs/$stage"; done

echo "== 2/5 ST-VAE stage 1 (images)"
"$LAVINKIT" fit --config recipes/stvae/tiny_stage1.yaml

echo "== 3/5 ST-VAE stage 2 (images + clips)"
"$LAVINKIT" fit --config recipes/stvae/tiny_stage2.yaml

echo "== 4/5 J-DiT (in-context flow matching)"
"$LAVINKIT" fit --config recipes/jdit/tiny.yaml

echo "== 5/5 in-context inference on held-out pairs"
"$LAVINKIT" infer --checkpoint runs/tiny_jdit/checkpoints/last.ckpt --task-folder demo_data/tasks \
    --tasks "[colorization, denoising, super_resolution, inpainting, edge_detection, horizontal_flip]" \
    --num-pairs 2 --size 64x64 --steps 20 --guidance-scale 1.5 --encode-mode mean --seed 0 --out runs/quickstart

echo "done: runs/quickstart/results_grid.png (query | example pairs | result | target, one row per task)"
echo "TensorBoard: tensorboard --logdir runs"
