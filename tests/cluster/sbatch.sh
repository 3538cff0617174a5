# shellcheck shell=bash
# Cluster tests, area "sbatch" (run: tests/cluster/run sbatch).
# sbatch/salloc --container: the batch script (salloc's command) on the
# host, its steps in the image.

cat > "$JOBDIR/job.sh" <<'JOB'
#!/bin/sh
echo "batch: $(test -e /opt/only-in-image.sh && echo container || echo host)"
srun -N2 sh -c 'echo "step: $(test -e /opt/only-in-image.sh && echo container || echo host) $(pwd)"'
JOB
chmod 755 "$JOBDIR/job.sh"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N2 -W --container="$IMG" -o "$JOBDIR/out.txt" "$JOBDIR/job.sh")
LAST=$(cat "$JOBDIR/out.txt" 2>&1)
check "sbatch --container: batch script on the host, its srun steps in the image" \
    bash -c '[[ "$1" == *"batch: host"* && $(grep -c "step: container $2" <<<"$1") -eq 2 ]]' _ "$LAST" "$JOBDIR"
check "sbatch: the job's working directory is mounted in the container" \
    bash -c '! grep -q "couldn.t chdir" <<<"$1"' _ "$LAST"

cat > "$JOBDIR/job-none.sh" <<'JOB'
#!/bin/sh
srun -N2 sh -c 'test -e /opt/only-in-image.sh && echo "step: container" || echo "step: host"'
JOB
chmod 755 "$JOBDIR/job-none.sh"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N2 -W --export=NONE --container="$IMG" -o "$JOBDIR/out-none.txt" "$JOBDIR/job-none.sh")
LAST=$(cat "$JOBDIR/out-none.txt" 2>&1)
check "sbatch --export=NONE --container: the steps still run in the image" \
    test "$(grep -c "step: container" <<<"$LAST")" -eq 2

run salloc -Q -N2 --container="$IMG" sh -c 'test -e /opt/only-in-image.sh && echo "salloc: container" || echo "salloc: host"
    srun -N2 sh -c "test -e /opt/only-in-image.sh && echo step: container || echo step: host"'
check "salloc --container: its command on the host, its srun steps in the image" \
    bash -c '[[ "$1" == *"salloc: host"* && $(grep -c "step: container" <<<"$1") -eq 2 ]]' _ "$LAST"

# An srun's own --container beats the --sif-image its job was submitted
# with (that one is only the job's default).
cat > "$JOBDIR/job-override.sh" <<JOB
#!/bin/sh
srun -N1 --container="$WORK/no-such-image.sif" true
JOB
chmod 755 "$JOBDIR/job-override.sh"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N1 -W --sif-image="$IMG" -o "$JOBDIR/out-override.txt" "$JOBDIR/job-override.sh")
LAST=$(cat "$JOBDIR/out-override.txt" 2>&1)
check "inside sbatch --sif-image, srun --container=other.sif runs other.sif" \
    bash -c '[[ "$1" == *"no-such-image.sif"* ]]' _ "$LAST"

# sbatch --container-batch: the batch script itself in the image (busybox,
# no C library of its own), with the host's Slurm commands usable there.
cat > "$JOBDIR/job-inside.sh" <<'JOB'
#!/bin/sh
echo "batch: $(test -e /opt/only-in-image.sh && echo container || echo host)"
echo "srun is $(command -v srun)"
srun -N2 sh -c 'echo "step: $(test -e /opt/only-in-image.sh && echo container || echo host)"'
squeue -h -j "$SLURM_JOB_ID" -o "squeue: %i %T"
scontrol show job "$SLURM_JOB_ID" | grep -o "JobState=[A-Z]*"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-unset}"
JOB
chmod 755 "$JOBDIR/job-inside.sh"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N2 -W --container="$IMG" --container-batch -o "$JOBDIR/out-inside.txt" "$JOBDIR/job-inside.sh")
LAST=$(cat "$JOBDIR/out-inside.txt" 2>&1)
check "sbatch --container-batch: the batch script runs in the image" \
    bash -c '[[ "$1" == *"batch: container"* && "$1" == *"srun is /.sifrun/bin/srun"* ]]' _ "$LAST"
check "sbatch --container-batch: the host's srun, squeue and scontrol work in it, and srun's steps run in the image" \
    bash -c '[[ $(grep -c "step: container" <<<"$1") -eq 2 && "$1" == *"squeue: "*" RUNNING"* && "$1" == *"JobState=RUNNING"* ]]' _ "$LAST"
check "sbatch --container-batch: the host's libraries are not on the script's library path" \
    bash -c 'grep -q "^LD_LIBRARY_PATH=" <<<"$1" && ! grep -q "^LD_LIBRARY_PATH=.*/.sifrun" <<<"$1"' _ "$LAST"

# salloc without a command: its shell (the interactive step, on the first
# node: LaunchParameters=use_interactive_step) in the image too.
LAST=$(cd /tmp && printf '%s\n' 'test -e /opt/only-in-image.sh && echo "shell: container"' \
        'srun -N2 sh -c "test -e /opt/only-in-image.sh && echo step: container"' 'squeue -h -j $SLURM_JOB_ID -o "squeue: %T"' |
    runuser -u "$TEST_USER" -- env SHELL=/bin/sh timeout 60 salloc -Q -N2 --container="$IMG" --container-batch 2>&1)
check "salloc --container-batch: its shell runs in the image, with the host's srun and squeue" \
    bash -c '[[ "$1" == *"shell: container"* && $(grep -c "step: container" <<<"$1") -eq 2 && "$1" == *"squeue: RUNNING"* ]]' _ "$LAST"

# The admin may keep batch scripts on the host: one line says so.
cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.orig"
undo 'mv "$WORK/sifrun.toml.orig" "$WORK/sifrun.toml"'
echo "batch_in_container = false" >> "$WORK/sifrun.toml"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N1 -W --container="$IMG" --container-batch -o "$JOBDIR/out-off.txt" "$JOBDIR/job-inside.sh")
LAST=$(cat "$JOBDIR/out-off.txt" 2>&1)
run_undo
check "sbatch --container-batch where the site keeps batch scripts on the host: refused in one line" \
    bash -c '[[ $(grep -c "batch_in_container = false" <<<"$1") -eq 1 && "$1" != *"batch: container"* && "$1" != *"batch: host"* ]]' _ "$LAST"
