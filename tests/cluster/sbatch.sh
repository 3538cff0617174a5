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
