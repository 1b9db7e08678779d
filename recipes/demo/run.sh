#!/usr/bin/env bash
# The long demo: ST-VAE on images and clips, latents of both, a J-DiT trained on image and clip in-context
# examples, and the in-context evaluation on every demo task (under 50 minutes on 2 idle CPU cores; minutes on a GPU:
# add --trainer.accelerator gpu to the two fit commands and --device cuda to eval).
#
#   1. demo data   lavinkit data demo                          -> demo_data/
#   2. ST-VAE      recipes/demo/stvae.yaml (images + clips)    -> runs/demo_stvae/
#   3. latents     lavinkit encode, images and clips            -> runs/demo_latents/{images,clips}/{train,val}/
#   4. J-DiT       recipes/demo/jdit.yaml                       -> runs/demo_jdit/
#   5. evaluation  nine image tasks and four video tasks        -> runs/demo/{images,clips}/eval.{md,json}, grids
set -euo pipefail
cd "$(dirname "$0")/../.."
LAVINKIT="${LAVINKIT:-lavinkit}"

echo "== 1/5 demo data"
"$LAVINKIT" data demo --out demo_data

for stage in demo_stvae demo_latents demo_jdit demo; do rm -rf "runs/$stage"; done

echo "== 2/5 ST-VAE (images and clips)"
"$LAVINKIT" fit --config recipes/demo/stvae.yaml

echo "== 3/5 latents of the image and clip pairs"
for split in train val; do
    "$LAVINKIT" encode --data "demo_data/$split/images-*.tar" --out "runs/demo_latents/images/$split" \
        --vae runs/demo_stvae/checkpoints/last.ckpt --mode mean
    "$LAVINKIT" encode --data "demo_data/$split/videos-*.tar" --out "runs/demo_latents/clips/$split" \
        --vae runs/demo_stvae/checkpoints/last.ckpt --mode mean
done

echo "== 4/5 J-DiT (in-context flow matching on image and clip latents)"
"$LAVINKIT" fit --config recipes/demo/jdit.yaml

echo "== 5/5 evaluation on held-out pairs (4 answers per query, averaged; the query's ST-VAE residual transferred)"
# --ensemble-size 4: four answers per query from independent noise, their latents averaged (README, "One sample
# or the expected answer"); --residual-transfer: the detail the ST-VAE drops from the query comes back as much as
# the example pairs keep it (README, "Giving back what the ST-VAE drops")
"$LAVINKIT" eval --checkpoint runs/demo_jdit/checkpoints/last.ckpt --task-folder demo_data/tasks \
    --queries-per-task 4 --num-pairs 2 --size 64x64 --steps 20 --guidance-scale 1.5 --encode-mode mean \
    --ensemble-size 4 --residual-transfer true --seeds "[0]" --out runs/demo/images
"$LAVINKIT" eval --checkpoint runs/demo_jdit/checkpoints/last.ckpt --shards "demo_data/val/videos-*.tar" \
    --queries-per-task 2 --num-pairs 1 --size 64x64 --steps 20 --guidance-scale 1.5 --encode-mode mean \
    --ensemble-size 4 --residual-transfer true --seeds "[0]" --out runs/demo/clips

echo "done: runs/demo/images/eval.md, runs/demo/clips/eval.md and their eval_grid.png"
