#!/usr/bin/env bash
# Trains the synthetic `fruit_lawn` scene on CPU with the synthetic CLIP/DINO teachers.
# Used to produce the run shown in docs/viewer.md (14-20 minutes on 2 shared CPU cores).
# Short schedule (800 + 200 + 400 steps instead of 30k + 5k + 10k), so the MLP learning rates
# are scaled up by the same factor as the segmentation phases are shortened (25x).
#   bash docs/scripts/train_synthetic.sh [WORKDIR]   (default /tmp/ovs3d_docs)
set -euo pipefail
# One intra-op thread: on a shared, loaded CPU multi-threaded small ops are much slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${1:-/tmp/ovs3d_docs}
mkdir -p "$WORK"

python -c "
from ovs3d_nerfstudio.synthetic.scenes import write_benchmark_scene
write_benchmark_scene('fruit_lawn', '$WORK/fruit_lawn', seed=0, width=160, height=120)
"

ns-train ovs3d \
  --machine.device-type cpu --mixed-precision False \
  --vis tensorboard \
  --output-dir "$WORK/outputs" --experiment-name fruit_lawn --timestamp docs \
  --max-num-iterations 1400 --steps-per-save 700 \
  --steps-per-eval-batch 100000 --steps-per-eval-image 100000 --steps-per-eval-all-images 100000 \
  --pipeline.model.implementation torch \
  --pipeline.model.schedule.reconstruction-steps 800 \
  --pipeline.model.schedule.frozen-steps 200 \
  --pipeline.model.schedule.joint-steps 400 \
  --pipeline.model.schedule.frozen-lr-mlp 2.5e-3 --pipeline.model.schedule.joint-lr-mlp 1.25e-3 \
  --pipeline.model.proposal-warmup 130 \
  --pipeline.model.proposal-weights-anneal-max-num-iters 20 \
  --pipeline.model.num-levels 8 --pipeline.model.max-res 256 --pipeline.model.log2-hashmap-size 15 \
  --pipeline.model.hidden-dim 32 --pipeline.model.hidden-dim-color 32 \
  --pipeline.model.selection-num-levels 4 --pipeline.model.selection-max-res 128 \
  --pipeline.model.selection-log2-hashmap-size 13 \
  --pipeline.model.num-proposal-samples-per-ray 64 32 --pipeline.model.num-nerf-samples-per-ray 24 \
  --pipeline.model.eval-num-rays-per-chunk 4096 \
  --pipeline.datamanager.train-num-rays-per-batch 512 \
  --pipeline.datamanager.ray-downscale 2 \
  --pipeline.datamanager.num-patches 4 --pipeline.datamanager.patch-tokens 8 \
  --pipeline.datamanager.patch-downscale 1 --pipeline.datamanager.patch-rays-per-token 1 \
  --pipeline.datamanager.clip.source ovs3d_nerfstudio.synthetic.teachers:synthetic_clip \
  --pipeline.datamanager.clip.batch-size 256 \
  --pipeline.datamanager.dino.source ovs3d_nerfstudio.synthetic.teachers:synthetic_dino \
  --pipeline.datamanager.cache-dir "$WORK/cache" \
  ovs3d-data --data "$WORK/fruit_lawn"
