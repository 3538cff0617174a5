# shellcheck shell=bash
# Cluster tests, area "lifecycle" (run: tests/cluster/run lifecycle).
# Concurrency, cancellation, escaping tasks and a killed slurmstepd: the
# container lives exactly as long as the step (or what is left in it).

cp "$IMG" "$WORK/images/second.sif"; chmod 644 "$WORK/images/second.sif"
run srun -N1 -n16 --container="$IMG" sh -c 'test -e /opt/only-in-image.sh && echo in'
check "16 tasks on one node all run in the container" test "$(grep -c '^in$' <<<"$LAST")" -eq 16

settled
pids=()
for i in 1 2 3 4; do
    as_user timeout 60 srun -Q -N1 -w node1 --container="$IMG" sh -c 'sleep 1; cat /etc/os-release' >"$WORK/par.$i" 2>&1 &
    pids+=($!)
done
as_user timeout 60 srun -Q -N1 -w node1 --container="$WORK/images/second.sif" sh -c 'sleep 1; cat /etc/os-release' >"$WORK/par.5" 2>&1 &
pids+=($!)
sleep 0.7
during="$(node_mounts node1) $(loops_of "$IMG") $(loops_of "$WORK/images/second.sif")"
ok=0
for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
LAST=$(cat "$WORK"/par.*)
check "5 concurrent steps, two images: one mount and one loop device per image" \
    test "$during" = "2 1 1"
check "5 concurrent steps on one node (two images) all succeed" \
    bash -c '[[ $1 -eq 5 && $(grep -c "sifrun busybox demo" <<<"$2") -eq 5 ]]' _ "$ok" "$LAST"
check "no loop device or mount left after concurrent steps" settled

# --- cancellation -----------------------------------------------------------
(cd /tmp && runuser -u "$TEST_USER" -- srun -N2 --container="$IMG" sleep 300 >/dev/null 2>&1 &)
for _ in $(seq 50); do squeue -h -t R | grep -q . && break; sleep 0.2; done
sleep 1
scancel -u "$TEST_USER"
for _ in $(seq 50); do squeue -h | grep -q . || break; sleep 0.2; done
sleep 1
check "scancel leaves no loop device or mount" settled

# --- tasks that escape the step -------------------------------------------------
# proctrack/linuxproc (this cluster) loses a task that starts its own session
# and whose parent exits; the plugin ends what is left in the container when
# the step ends (issue 23), so the image is not kept mounted after the job.
run srun -N1 -w node1 --container="$IMG" sh -c "$ESCAPING_TASK" _ 303
check "attack: a task escaped the step (setsid, parent gone)" grep -qx escaped <<<"$LAST"
check "the escaped task is ended with the step" gone_within 10 -u "$TEST_USER" -f '^sleep 303'
pkill -9 -u "$TEST_USER" -f '^sleep 303' || true

# --- slurmstepd killed with SIGKILL ----------------------------------------------
# The container lives exactly as long as something is in it: the orphaned
# task keeps it; once the task is gone, the kernel drops the namespace, the
# mount and (autoclear) the loop device, with nobody left to clean up.
(cd /tmp && runuser -u "$TEST_USER" -- srun -N1 -w node1 --container="$IMG" sleep 300 >/dev/null 2>&1 &)
stepd=""
for _ in $(seq 50); do
    stepd=$(pgrep -f 'slurmstepd: \[[0-9]+\.0\]' | head -1 || true)
    [[ -n $stepd ]] && pgrep -u "$TEST_USER" -x sleep >/dev/null && break
    sleep 0.2
done
kill -9 "$stepd" 2>/dev/null
sleep 1
pkill -9 -u "$TEST_USER" -x sleep || true
check "SIGKILL of slurmstepd: nothing left once its tasks are gone" settled
scancel -u "$TEST_USER" 2>/dev/null || true
