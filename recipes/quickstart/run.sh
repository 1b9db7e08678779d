#!/usr/bin/env bash
# The quickstart: the whole LaVin-DiT pipeline on the built-in demo data, on CPU (about 10 minutes on 2 cores).
# Every stage is an ordinary command with an ordinary recipe; open them, change them, run them one by one.
#
#   1. demo data       lavinkit data demo        -> demo_data/{train,val}/*.tar, demo_data/tasks/<task>/
#   2. ST-VAE stage 1  recipes/stvae/tiny_stage1.yaml (images)          -> runs/tiny_stvae_stage1/
#   3. ST-VAE stage 2  recipes/stvae/tiny_stage2.yaml (images + clips)  -> runs/tiny_stvae_stage2/
#   4. latents         lavinkit encode with the stage-2 VAE  -> runs/tiny_latents/{train,val}/latents-*.tar
#   5. J-DiT           recipes/jdit/tiny_latents.yaml (flow matching on in-context latent pairs) -> runs/tiny_jdit_latents/
#                      (recipes/jdit/tiny.yaml is the same run encoding pixels on the fly, ~3x slower per pair)
#   6. inference       lavinkit infer on held-out pairs of several tasks -> runs/quickstart/results_grid.png
#
# Re-running starts the training stages afresh (their previous outputs in runs/ are replaced).
set -euo pipefail
cd "$(dirname "$0")/../.."
LAVINKIT="${LAVINKIT:-lavinkit}"

echo "== 1/6 demo data"
"$LAVINKIT" data demo --out demo_data

for stage in tiny_stvae_stage1 tiny_stvae_stage2 tiny_latents tiny_jdit_latents quickstart; do rm -rf "runs/$stage"; done

echo "== 2/6 ST-VAE stage 1 (images)"
"$LAVINKIT" fit --config recipes/stvae/tiny_stage1.yaml

echo "== 3/6 ST-VAE stage 2 (images + clips)"
"$LAVINKIT" fit --config recipes/stvae/tiny_stage2.yaml

echo "== 4/6 encode the demo pairs to latents (frozen stage-2 VAE, posterior mean)"
for split in train val; do
    "$LAVINKIT" encode --data "demo_data/$split/images-*.tar" --out "runs/tiny_latents/$split" \
        --vae runs/tiny_stvae_stage2/checkpoints/last.ckpt --mode mean
done

echo "== 5/6 J-DiT (in-context flow matching on latents)"
"$LAVINKIT" fit --config recipes/jdit/tiny_latents.yaml

echo "== 6/6 in-context inference on held-out pairs"
"$LAVINKIT" infer --checkpoint runs/tiny_jdit_latents/checkpoints/last.ckpt --task-folder demo_data/tasks \
    --tasks "[colorization, denoising, super_resolution, inpainting, edge_detection, horizontal_flip]" \
    --num-pairs 2 --size 64x64 --steps 20 --guidance-scale 1.5 --encode-mode mean --seed 0 --out runs/quickstart

echo "done: runs/quickstart/results_grid.png (query | example pairs | result | target, one row per task)"
echo "TensorBoard: tensorboard --logdir runs"
