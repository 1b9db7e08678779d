#!/usr/bin/env bash
# The quickstart: the whole LaVin-DiT pipeline on the built-in demo data, on CPU (about 16 minutes on 2 cores),
# ending with an evaluation of in-context learning on held-out pairs. Every stage is an ordinary command with an
# ordinary recipe; open them, change them, run them one by one.
#
#   1. demo data   lavinkit data demo                      -> demo_data/{train,val}/*.tar, demo_data/tasks/<task>/
#   2. ST-VAE      recipes/quickstart/stvae.yaml (images)  -> runs/quickstart_stvae/
#   3. latents     lavinkit encode with that VAE           -> runs/quickstart_latents/{train,val}/latents-*.tar
#   4. J-DiT       recipes/quickstart/jdit.yaml (in-context flow matching on the latents) -> runs/quickstart_jdit/
#   5. evaluation  lavinkit eval on held-out pairs of six tasks -> runs/quickstart/eval.{md,json}, eval_grid.png
#
# Re-running starts the training stages afresh (their previous outputs in runs/ are replaced).
# The longer recipe set on images and clips is recipes/demo/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAVINKIT="${LAVINKIT:-lavinkit}"

echo "== 1/5 demo data"
"$LAVINKIT" data demo --out demo_data

for stage in quickstart_stvae quickstart_latents quickstart_jdit quickstart; do rm -rf "runs/$stage"; done

echo "== 2/5 ST-VAE (images)"
"$LAVINKIT" fit --config recipes/quickstart/stvae.yaml

echo "== 3/5 encode the demo pairs to latents (frozen ST-VAE, posterior mean)"
for split in train val; do
    "$LAVINKIT" encode --data "demo_data/$split/images-*.tar" --out "runs/quickstart_latents/$split" \
        --vae runs/quickstart_stvae/checkpoints/last.ckpt --mode mean
done

echo "== 4/5 J-DiT (in-context flow matching on latents)"
"$LAVINKIT" fit --config recipes/quickstart/jdit.yaml

echo "== 5/5 evaluation on held-out pairs: prediction vs identity, VAE ceiling, swapped-task context"
# --residual-transfer: the detail the ST-VAE drops from the query comes back as much as the example pairs keep it
# (README, "Giving back what the ST-VAE drops"); --guidance-scale 1.0: no guidance, one J-DiT forward per step
# (README, "Guidance and the expected answer")
"$LAVINKIT" eval --checkpoint runs/quickstart_jdit/checkpoints/last.ckpt --task-folder demo_data/tasks \
    --tasks "[colorization, inpainting, edge_detection, low_light_enhancement, horizontal_flip, denoising]" \
    --queries-per-task 8 --num-pairs 2 --size 64x64 --steps 20 --guidance-scale 1.0 --encode-mode mean \
    --residual-transfer true --seeds "[0]" --out runs/quickstart

echo "done: runs/quickstart/eval.md (the table above) and runs/quickstart/eval_grid.png"
echo "  (query | example pairs | prediction | target | identity | prediction with another task's pairs, one row per task)"
echo "TensorBoard: tensorboard --logdir runs"
