# shellcheck shell=bash
# Cluster tests, area "kept" (run: tests/cluster/run kept).
# Containers kept for a job's later steps (runtime node::kept_containers):
# steps of one job that ask for the same container join the one its first
# step built; anything different, and the image opened as the user again,
# decide at every step; the job's end takes them away.

# kept_dirs NODE: the kept containers in NODE's state directory.
kept_dirs() {
    nsenter -t "$(slurmd_pid_of "$1")" -m sh -c 'ls /run/sifrun/containers 2>/dev/null' | grep -c . || true
}
# job SCRIPT-BODY: runs it as an sbatch-like script in a one-node allocation
# on node1 (salloc), output in LAST.
job() {
    printf '#!/bin/sh\n%s\n' "$1" > "$WORK/kept-job.sh"
    chmod 755 "$WORK/kept-job.sh"
    run salloc -Q -N1 -w node1 "$WORK/kept-job.sh"
}
ns_of='readlink /proc/self/ns/mnt'

settled
job "for i in 1 2 3; do srun -Q --container=$IMG $ns_of; done
srun -Q --container=$IMG --container-mounts=/tmp:/other $ns_of
srun -Q --container=$IMG $ns_of"
steps=$LAST
check "three steps of one job run in one container (one mount namespace)" \
    bash -c '[[ $(head -3 <<<"$1" | sort -u | wc -l) -eq 1 && $1 == mnt:* ]]' _ "$steps"
check "a step with other options gets a container of its own, and the kept one is there after it" \
    bash -c 'l=($1); [[ ${l[3]} != "${l[0]}" && ${l[4]} == "${l[0]}" ]]' _ "$(tr '\n' ' ' <<<"$steps")"
gone_kept() { # no kept container on node1 within 5 s
    local _
    for _ in $(seq 50); do [[ $(kept_dirs node1) == 0 ]] && return 0; sleep 0.1; done
    LAST="kept containers on node1: $(kept_dirs node1)"; return 1
}
check "the job's end takes its kept containers away" gone_kept
check "nothing is left mounted or attached once the cache is idle" settled

# What a step checks at every step: the image, opened as the user.
cp "$IMG" "$WORK/images/mine.sif"; chown "$TEST_USER" "$WORK/images/mine.sif"; chmod 644 "$WORK/images/mine.sif"
job "srun -Q --container=$WORK/images/mine.sif $ns_of
chmod 000 $WORK/images/mine.sif
srun -Q --container=$WORK/images/mine.sif $ns_of; echo \"status \$?\""
check "a user who can no longer read the image cannot join the container it kept" \
    bash -c '[[ $(grep -c "^sifrun: error:.*mine.sif.*permission denied" <<<"$1") -eq 1 && $1 == *"status 1"* ]]' _ "$LAST"

mkdir -p "$WORK/rootfs-kept"; cp -a "$WORK/rootfs/." "$WORK/rootfs-kept/"
echo 'PRETTY_NAME="second version"' > "$WORK/rootfs-kept/etc/os-release"
"$SIFRUN" build --force "$WORK/rootfs-kept" -o "$WORK/images/v2-kept.sif" >/dev/null
cp "$IMG" "$WORK/images/changing-kept.sif"; chown "$TEST_USER" "$WORK/images/changing-kept.sif"
chmod 644 "$WORK/images/changing-kept.sif"
job "srun -Q --container=$WORK/images/changing-kept.sif cat /etc/os-release
cp $WORK/images/v2-kept.sif $WORK/images/changing-kept.sif 2>&1
srun -Q --container=$WORK/images/changing-kept.sif cat /etc/os-release"
check "an image rewritten between two steps runs in its new version (not the kept container)" \
    bash -c '[[ $1 == *"sifrun busybox demo"* && $1 == *"second version"* ]]' _ "$LAST"
job "srun -Q --container=$WORK/images/changing-kept.sif true
cat $WORK/images/v2-kept.sif > $WORK/images/changing-kept.sif
srun -Q --container=$WORK/images/changing-kept.sif cat /etc/os-release"
check "an image changed in place (same inode) between two steps is not served from the kept container" \
    bash -c '[[ $1 == *"second version"* ]]' _ "$LAST"

# Steps running side by side in the kept container: the one that ends
# first takes nothing of the other's with it.
job "srun -Q --container=$IMG true
srun -Q --overlap --container=$IMG sh -c 'sleep 2; echo long step done' &
sleep 0.5
srun -Q --overlap --container=$IMG echo short step done
wait"
check "a step ending in a kept container leaves a step still running there alone" \
    bash -c '[[ $1 == *"short step done"* && $1 == *"long step done"* ]]' _ "$LAST"

# The holder: the process that keeps the namespace, without privilege.
holder_status() {
    local rec pid
    rec=$(nsenter -t "$(slurmd_pid_of node1)" -m sh -c 'cat /run/sifrun/containers/*/record.json 2>/dev/null' | head -1)
    pid=$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' <<<"$rec")
    [[ -n $pid ]] || { echo "no holder in the record: ${rec:-no record}"; return; }
    grep -E '^(CapEff|CapPrm|CapBnd)' "/proc/$pid/status"
    cat "/proc/$pid/cgroup"
    echo "comm $(cat "/proc/$pid/comm")"
}
# The job lasts until the look at its holder is done (a marker file), so a
# job that waits in the queue first cannot end the look early. The earlier
# jobs' containers must be gone first: a record of theirs, seen just before
# their epilog removes it, would be taken for this job's.
gone_kept || true
rm -f "$WORK/holder-seen"
(cd /tmp && runuser -u "$TEST_USER" -- timeout 120 salloc -Q -N1 -w node1 sh -c \
    "srun -Q --container=$IMG true; for i in \$(seq 600); do [ -e $WORK/holder-seen ] && break; sleep 0.1; done") \
    >/dev/null 2>&1 &
holder_job=$!
# The directory comes first, its record (with the holder) once the
# container is built: wait for the record.
for _ in $(seq 600); do
    nsenter -t "$(slurmd_pid_of node1)" -m sh -c 'ls /run/sifrun/containers/*/record.json' >/dev/null 2>&1 && break
    sleep 0.1
done
LAST=$(holder_status)
check "the holder of a kept container has no capabilities, is outside the step's cgroup and is named sifrun-holder" \
    bash -c '[[ $1 == *"CapEff:	0000000000000000"* && $1 == *"CapPrm:	0000000000000000"* && $1 != *"step_"* && $1 == *"comm sifrun-holder"* ]]' _ "$LAST"
touch "$WORK/holder-seen"
wait "$holder_job"

# Idle kept containers go after cache_idle_secs, even while their job runs;
# the next step builds one again.
job "srun -Q --container=$IMG $ns_of
sleep $((CACHE_IDLE + 3))
srun -Q --container=$IMG sh -c '$ns_of; echo ran'"
check "a kept container idle for cache_idle_secs is removed, and the job's next step builds another" \
    bash -c 'l=($1); [[ ${#l[@]} -eq 3 && ${l[0]} == mnt:* && ${l[2]} == ran ]]' _ "$(tr '\n' ' ' <<<"$LAST")"
check "no holder or kept container outlives its job" gone_kept

# Named containers (--container-name, pyxis): kept by name, writable, and
# joined by later steps that give only the name; idle time does not end
# them, the job's end does. The image has a directory anyone may write.
mkdir -p "$WORK/rootfs-named"; cp -a "$WORK/rootfs/." "$WORK/rootfs-named/"
mkdir -m 1777 "$WORK/rootfs-named/work-area"
"$SIFRUN" build --force "$WORK/rootfs-named" -o "$WORK/images/named.sif" >/dev/null; chmod 644 "$WORK/images/named.sif"
NAMED=$WORK/images/named.sif
job "srun -Q --container=$NAMED --container-name=dev --container-writable sh -c 'echo installed > /work-area/tool; $ns_of'
srun -Q --container=$NAMED --container-mounts=/tmp:/other --container-name=dev sh -c '$ns_of'
sleep $((CACHE_IDLE + 3))
srun -Q --container-name=dev:exec sh -c 'cat /work-area/tool; $ns_of'
srun -Q --container=$NAMED --container-writable sh -c 'cat /work-area/tool 2>&1 | grep -c \"No such\"'"
check "--container-name: a later step of the job, by name alone, sees what the first step wrote, in the same container, after the idle time" \
    bash -c 'l=($1); [[ ${#l[@]} -eq 5 && ${l[0]} == mnt:* && ${l[1]} == "${l[0]}" && ${l[2]} == installed && ${l[3]} == "${l[0]}" && ${l[4]} == 1 ]]' _ "$(tr '\n' ' ' <<<"$LAST")"
job "srun -Q --container=$NAMED --container-name=dev true"
LAST+=" | $(as_user timeout 60 salloc -Q -N1 -w node1 srun -Q --container-name=dev true 2>&1)"
check "a named container belongs to its job: another job finds none by that name" \
    bash -c '[[ $1 == *"--container-name=dev: no such container in this job on this node yet"* ]]' _ "$LAST"
job "srun -Q --container-name=fresh:exec true; echo \"status \$?\"
srun -Q --container=$IMG --container-name=fresh true
srun -Q --container=$IMG --container-name=fresh:create true; echo \"status \$?\"
srun -Q --container=$WORK/images/private.sif --container-name=fresh true; echo \"status \$?\""
check "--container-name modes: :exec needs the container, :create refuses an existing one, another image is refused" \
    bash -c '[[ $(grep -c "status 1" <<<"$1") -eq 3 && $1 == *"fresh: no such container in this job on this node"* && $1 == *"exists in this job on this node already"* && $1 == *"it was made from"* ]]' _ "$LAST"
cp "$IMG" "$WORK/images/named-mine.sif"; chown "$TEST_USER" "$WORK/images/named-mine.sif"; chmod 644 "$WORK/images/named-mine.sif"
job "srun -Q --container=$WORK/images/named-mine.sif --container-name=n1 true
chmod 000 $WORK/images/named-mine.sif
srun -Q --container-name=n1 true; echo \"status \$?\""
check "a user who can no longer read its image cannot join a named container" \
    bash -c '[[ $1 == *"named-mine.sif"*"permission denied"* && $1 == *"status 1"* ]]' _ "$LAST"
check "no named container outlives its job" gone_kept

# --container-save (pyxis): the step's container, without its binds,
# becomes a SIF image built as the user.
mkdir -p "$WORK/save-out"; chown "$TEST_USER" "$WORK/save-out"; rm -f "$WORK/save-out"/*
run srun -N1 --container="$NAMED" --container-writable --container-mounts="$WORK/data:/hostdata" \
    --container-save="$WORK/save-out/saved.sif" sh -c 'echo from-the-step > /work-area/made'
saved_line=$LAST
run srun -N1 --container="$WORK/save-out/saved.sif" \
    sh -c 'cat /work-area/made; ls /hostdata | wc -l; grep -c "sifrun busybox demo" /etc/os-release'
LAST="save: $saved_line | run: $(tr '\n' ' ' <<<"$LAST") | owner $(stat -c %u "$WORK/save-out/saved.sif" 2>&1)"
check "--container-save: the saved image has what the step wrote and the image, not the binds, and is the user's" \
    test "$LAST" = "save: sifrun: saved the container to $WORK/save-out/saved.sif | run: from-the-step 0 1  | owner $TEST_UID"
run srun -N1 --container="$NAMED" --container-save=/proc/nowhere/saved.sif true
check "--container-save where the user cannot write fails in one line" \
    bash -c '[[ $(grep -c "sifrun: error: --container-save=/proc/nowhere/saved.sif" <<<"$1") -eq 1 ]]' _ "$LAST"
check "nothing is left mounted or attached after the kept-container checks" settled
