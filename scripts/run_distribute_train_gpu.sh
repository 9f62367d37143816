#!/usr/bin/env bash
# Another name of run_distribute_train_for_gpu.sh (the original README uses both); same usage:
# bash run_distribute_train_gpu.sh [RANK_SIZE] [DATASET_PATH] [--dry_run] [--foreground]
#     [--nodes N --node_rank K --master_addr HOST] [--master_port P] [--hostfile FILE] [train.py options...]
exec bash "$(dirname "$0")/run_distribute_train_for_gpu.sh" "$@"
