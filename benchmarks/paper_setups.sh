#!/usr/bin/env bash
# The paper's other three setups (issue 13) at a reduced scale that fits a 2-core CPU:
# the 10% mini subsets of CIFAR-10/100 (5,000 training and 1,000 test images), reduced widths,
# the paper's reductions per mode (SPEC "Reference figures"), the five methods, seeds 0 and 1.
# Every command resumes where it stopped (--resume); run it again after an interruption.
#   OMP_WAIT_POLICY=PASSIVE setsid nohup bash benchmarks/paper_setups.sh >> runs/paper_setups.log 2>&1 &
set -euo pipefail
DATA=${DATA:-../shared/data}
EP="${EDGEPRUNE:-.venv/bin/edgeprune}"
COMMON=(--baselines l1 nuclear uniform unweighted --seeds 0 1 --threads 1 --resume)

# AlexNet / CIFAR-100: PA 63.92%, FA 79.28%, MA 83.31% reductions.
"$EP" compare alexnet --width 0.5 --data "$DATA/cifar100-mini.tar.gz" --epochs 10 --finetune-epochs 10 \
  --modes params flops memory --target params=0.3608 flops=0.2072 memory=0.1669 \
  --out runs/paper_alexnet_w05_c100mini "${COMMON[@]}"

# MobileNetV2 / CIFAR-10: PA 70.03%, FA 50.77%, MA 53.5%.
"$EP" compare mobilenetv2 --width 0.25 --data "$DATA/cifar10-mini.tar.gz" --epochs 10 --finetune-epochs 10 \
  --modes params flops memory --target params=0.2997 flops=0.4923 memory=0.465 \
  --out runs/paper_mobilenetv2_w025_c10mini "${COMMON[@]}"

# ResNet-50 / CIFAR-100: PA 53.4%, FA 51.33%, MA 30.2%.
"$EP" compare resnet50 --width 0.25 --data "$DATA/cifar100-mini.tar.gz" --epochs 8 --finetune-epochs 8 \
  --modes params flops memory --target params=0.466 flops=0.4867 memory=0.698 \
  --out runs/paper_resnet50_w025_c100mini "${COMMON[@]}"

# Scales chosen from training steps measured on 2026-12-02 (batch 128, one thread, beside another one-thread
# training run): AlexNet 100 classes 73 images/s at width 1, 210 at 0.5; MobileNetV2 66-81 at 0.5, 131 at 0.25;
# ResNet-50 100 classes 22 at 0.5, 46-75 at 0.25. On the 5,000-image mini sets that puts every run at 1-9 min.
# (Appended rather than put in the header: a running bash reads its script by offset.)

# Then, for each setup, the direct network trained as long as the l1 pipeline took (--time-matched: the
# finished runs are read back, only the direct-matched runs train; their epochs are matched on steady epoch
# times, so that pauses do not skew them).
"$EP" compare alexnet --width 0.5 --data "$DATA/cifar100-mini.tar.gz" --epochs 10 --finetune-epochs 10 \
  --modes params flops memory --target params=0.3608 flops=0.2072 memory=0.1669 --time-matched \
  --out runs/paper_alexnet_w05_c100mini "${COMMON[@]}"
"$EP" compare mobilenetv2 --width 0.25 --data "$DATA/cifar10-mini.tar.gz" --epochs 10 --finetune-epochs 10 \
  --modes params flops memory --target params=0.2997 flops=0.4923 memory=0.465 --time-matched \
  --out runs/paper_mobilenetv2_w025_c10mini "${COMMON[@]}"
"$EP" compare resnet50 --width 0.25 --data "$DATA/cifar100-mini.tar.gz" --epochs 8 --finetune-epochs 8 \
  --modes params flops memory --target params=0.466 flops=0.4867 memory=0.698 --time-matched \
  --out runs/paper_resnet50_w025_c100mini "${COMMON[@]}"
