#!/bin/sh
# sifrun site hook "pytorch": PyTorch's rendezvous variables for
# torch.distributed (env://) from Slurm's, like enroot's PyTorch hook:
# MASTER_ADDR (the step's first node), MASTER_PORT (49152 + job ID % 16384,
# enroot's rule) and WORLD_SIZE (the step's task count).
#
# Install as /etc/sifrun/hooks.d/pytorch.sh (root's, mode 755) and offer it
# (user_hooks = ["pytorch"]) or run it for every container. A hook runs once
# per node, so the per-task RANK and LOCAL_RANK cannot come from here: the
# plugin's pytorch_env setting sets those (and these) in every task.
#
# The Slurm variables are the job's: they are only copied, never run.
set -eu
[ "${SIFRUN_HOOK_POINT:-}" = setup ] || exit 0
: "${SIFRUN_ENV_FILE:?}"

nodes=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
[ -n "$nodes" ] || { echo "pytorch hook: no node list in the step's Slurm variables" >&2; exit 1; }
first=$(scontrol show hostnames "$nodes" 2>/dev/null | head -n 1)
[ -n "$first" ] || { echo "pytorch hook: scontrol cannot expand $nodes" >&2; exit 1; }
case $first in *[!A-Za-z0-9.-]*) echo "pytorch hook: odd node name" >&2; exit 1 ;; esac
job=${SIFRUN_JOB_ID:-0}
tasks=${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:-1}}
case $tasks in ''|*[!0-9]*) tasks=1 ;; esac
{
    echo "MASTER_ADDR=$first"
    echo "MASTER_PORT=$((49152 + job % 16384))"
    echo "WORLD_SIZE=$tasks"
} >> "$SIFRUN_ENV_FILE"
