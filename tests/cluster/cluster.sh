# shellcheck shell=bash
# Cluster tests, area "cluster" (run: tests/cluster/run cluster).
# The test cluster itself (ci/cluster), before anything of sifrun is
# judged on it: every node idle, jobs as the test user, one mount namespace
# and private directories per node, PMIx wiring. A failure here explains
# failures in every other area.

STATE_DIR=$(ci/cluster paths | awk '$1 == "state" && $2 == "dir" {print $3}')
ENV_FILE=$STATE_DIR/cluster.env
NODE_UTS=$(sed -n 's/^NODE_UTS=//p' "$ENV_FILE")
NODE_PRIVATE_DIRS=$(source "$ENV_FILE"; echo "$NODE_PRIVATE_DIRS")
NODES=$(sed -n 's/^NODES=//p' "$ENV_FILE")
# In the user's home: /tmp is private per node.
cluster_user() { (cd "$(getent passwd "$TEST_USER" | cut -d: -f6)" && runuser -u "$TEST_USER" -- "$@"); }
# quietly NAME FUNCTION ARGS...: a check whose function's output is shown
# only when it fails.
quietly() {
    local name=$1 out; shift
    if out=$("$@" 2>&1); then LAST=""; check "$name" true; else LAST=$(sed 's/^/     | /' <<<"$out"); check "$name" false; fi
}

t_nodes_idle() {
    local n=$1 s
    s=$(sinfo -h -N -o '%N %t' | sort -u)
    echo "$s"
    [[ $(grep -c ' idle$' <<<"$s") -eq $n ]]
}
t_hostnames() {
    local n=$1 out want
    out=$(cluster_user timeout 30 srun -N"$n" -t 1 sh -c 'echo "$(hostname) $SLURMD_NODENAME"' | sort)
    want=$(for i in $(seq "$n"); do
        if [[ $NODE_UTS == 1 ]]; then echo "node$i node$i"; else echo "$(hostname) node$i"; fi
    done | sort)
    echo "got: $out"; [[ $out == "$want" ]]
}
t_private_dirs() { # each node has its own tmpfs on every private dir; the host none
    local n=$1 i d pid mi
    for d in $NODE_PRIVATE_DIRS; do
        for i in $(seq "$n"); do
            pid=$(slurmd_pid_of "node$i")
            mi=$(awk -v d="$d" '$5 == d' "/proc/$pid/mountinfo")
            echo "node$i $d: ${mi:-none}"
            grep -q " - tmpfs sifrun-node$i" <<<"$mi" || return 1
        done
        mi=$(awk -v d="$d" '$5 == d' /proc/self/mountinfo)
        ! grep -q ' - tmpfs sifrun-node' <<<"$mi" || { echo "host: $mi"; return 1; }
    done
}
t_tasks() {
    local n=$1 out
    out=$(cluster_user timeout 30 srun -N"$n" -n8 -t 1 sh -c 'echo $SLURM_PROCID' | sort -n | tr '\n' ' ')
    echo "got: $out"; [[ $out == "0 1 2 3 4 5 6 7 " ]]
}
t_user() {
    local out
    out=$(cluster_user timeout 30 srun -N1 -t 1 id -un)
    echo "got: $out"; [[ $out == "$TEST_USER" ]]
}
t_sbatch() {
    local home out f
    home=$(getent passwd "$TEST_USER" | cut -d: -f6)
    f="$home/selftest-sbatch.out"; rm -f "$f"
    cluster_user timeout 60 sbatch -W -N1 -n2 -t 1 -o "$f" --wrap 'echo batch-ok on $SLURMD_NODENAME; srun -n2 true && echo step-ok'
    out=$(cat "$f"); rm -f "$f"
    echo "got: $out"; grep -q '^batch-ok on node' <<<"$out" && grep -q '^step-ok$' <<<"$out"
}
t_mntns_distinct() {
    local n=$1 i pid all host
    host=$(readlink /proc/self/ns/mnt)
    all=$(for i in $(seq "$n"); do pid=$(slurmd_pid_of "node$i"); readlink "/proc/$pid/ns/mnt"; done)
    echo "host $host; nodes: $(tr '\n' ' ' <<<"$all")"
    [[ $(sort -u <<<"$all" | wc -l) -eq $n ]] && ! grep -qxF "$host" <<<"$all"
}
t_task_ns() { # a task on nodeI runs in nodeI's slurmd mount namespace
    local n=$1 i got want
    for i in $(seq "$n"); do
        got=$(cluster_user timeout 30 srun -N1 -w "node$i" -t 1 readlink /proc/self/ns/mnt)
        want=$(readlink "/proc/$(slurmd_pid_of "node$i")/ns/mnt")
        echo "node$i task=$got slurmd=$want"
        [[ $got == "$want" ]] || return 1
    done
}
t_stepd_ns() { # running slurmstepd processes sit in their node's namespace
    local n=$1 job p ns ok=0
    cluster_user timeout 30 srun -N"$n" -t 1 sleep 3 >/dev/null 2>&1 &
    job=$!
    for _ in $(seq 40); do
        sleep 0.1
        pgrep -x slurmstepd >/dev/null && break
    done
    sleep 0.5
    local want=()
    for i in $(seq "$n"); do want+=("$(readlink "/proc/$(slurmd_pid_of "node$i")/ns/mnt")"); done
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null) == slurmstepd ]] || continue
        ns=$(readlink "$p/ns/mnt" 2>/dev/null) || continue
        echo "slurmstepd ${p#/proc/} ($(tr '\0' ' ' <"$p/cmdline")) in $ns"
        [[ $ns != "$(readlink /proc/self/ns/mnt)" ]] || return 1
        printf '%s\n' "${want[@]}" | grep -qxF "$ns" || return 1
        ok=$((ok + 1))
    done
    wait "$job" || { echo "the sleep job failed"; return 1; }
    (( ok >= n ))
}
t_tmp_private() {
    local n=$1 f=/tmp/sifrun-selftest.$$ out
    cluster_user timeout 30 srun -N1 -w node1 -t 1 sh -c "echo hi > $f"
    out=$(cluster_user timeout 30 srun -N1 -w node1 -t 1 cat "$f") || { echo "not kept on node1"; return 1; }
    [[ $out == hi ]] || return 1
    [[ ! -e $f ]] || { echo "visible in host /tmp"; return 1; }
    if (( n >= 2 )); then
        cluster_user timeout 30 srun -N1 -w node2 -t 1 test ! -e "$f" || { echo "visible on node2"; return 1; }
    fi
    cluster_user timeout 30 srun -N1 -w node1 -t 1 rm -f "$f"
}
t_mount_private() { # a mount made in node1's namespace is seen by its steps only
    local n=$1 mp="$STATE_DIR/probe" pid1 rc=0
    install -d -m 0755 "$mp"
    pid1=$(slurmd_pid_of node1)
    nsenter -t "$pid1" -m mount -t tmpfs -o size=1m sifrun-probe "$mp"
    nsenter -t "$pid1" -m sh -c "echo probe > $mp/marker"
    cluster_user timeout 30 srun -N1 -w node1 -t 1 grep -q probe "$mp/marker" || { echo "node1 step misses the mount"; rc=1; }
    if (( n >= 2 )); then
        cluster_user timeout 30 srun -N1 -w node2 -t 1 test ! -e "$mp/marker" || { echo "visible on node2"; rc=1; }
        grep -q sifrun-probe "/proc/$(slurmd_pid_of node2)/mountinfo" && { echo "in node2 mountinfo"; rc=1; }
    fi
    grep -q sifrun-probe /proc/self/mountinfo && { echo "visible on host"; rc=1; }
    [[ ! -e $mp/marker ]] || { echo "marker visible on host"; rc=1; }
    nsenter -t "$pid1" -m umount "$mp"
    rmdir "$mp"
    return $rc
}
t_host_mount_propagates() { # propagation=slave: a host mount made later shows up in nodes (if / is shared)
    local prop
    prop=$(findmnt -n -o PROPAGATION /)
    if [[ $prop != shared* ]]; then echo "host / is '$prop': nothing propagates (fine)"; return 0; fi
    local mp="$STATE_DIR/hostprobe" rc=0
    install -d "$mp"; mount -t tmpfs -o size=1m sifrun-hostprobe "$mp"; echo x >"$mp/m"
    cluster_user timeout 30 srun -N1 -w node1 -t 1 test -e "$mp/m" || { echo "host mount not seen on node1"; rc=1; }
    umount "$mp"; rmdir "$mp"; return $rc
}
t_pmix() { # --mpi=pmix works; each node's PMIx server dir is in its own spool
    local n=$1 out i
    out=$(cluster_user timeout 30 srun --mpi=pmix -N"$n" -n$(( 2 * n )) -t 1 \
        sh -c 'echo "$SLURMD_NODENAME $PMIX_RANK $PMIX_SERVER_TMPDIR $PMIX_NAMESPACE"' | sort -k2n)
    echo "$out"
    [[ $(awk '{print $2}' <<<"$out" | tr '\n' ' ') == "$(seq -s ' ' 0 $(( 2 * n - 1 ))) " ]] || return 1
    for i in $(seq "$n"); do
        grep -q "^node$i [0-9]* $STATE_DIR/spool/node$i/pmix\." <<<"$out" || return 1
    done
}
t_timing() {
    local n=$1 a b
    a=$(cluster_user bash -c 'TIMEFORMAT=%3R; { time srun -N1 -n1 -t 1 true; } 2>&1')
    echo "srun -N1 -n1 true: ${a}s"
    if (( n >= 2 )); then
        b=$(cluster_user bash -c 'TIMEFORMAT=%3R; { time srun -N2 -n8 -t 1 true; } 2>&1')
        echo "srun -N2 -n8 true: ${b}s"
    fi
}


two=$(( NODES < 2 ? NODES : 2 ))
quietly "all $NODES nodes idle" t_nodes_idle "$NODES"
quietly "jobs run as $TEST_USER" t_user
quietly "srun -N$NODES: hostname and SLURMD_NODENAME per node" t_hostnames "$NODES"
quietly "srun -N$two -n8: ranks 0..7" t_tasks "$two"
quietly "sbatch --wrap (with a step) completes" t_sbatch
quietly "each slurmd has its own mount namespace" t_mntns_distinct "$NODES"
quietly "private tmpfs per node on: $NODE_PRIVATE_DIRS" t_private_dirs "$NODES"
quietly "tasks run in their node's mount namespace" t_task_ns "$NODES"
quietly "slurmstepd inherits the node's mount namespace" t_stepd_ns "$two"
quietly "/tmp is private per node" t_tmp_private "$NODES"
quietly "node1 mount invisible on node2 and host" t_mount_private "$NODES"
quietly "host mounts propagate into nodes (slave)" t_host_mount_propagates
if [[ -e /usr/lib/x86_64-linux-gnu/pmix2/lib/libpmix.so ]]; then
    quietly "srun --mpi=pmix: ranks and per-node server dirs" t_pmix "$NODES"
else
    echo "skip srun --mpi=pmix (install libpmix-dev: mpi/pmix dlopens pmix2/lib/libpmix.so)"
fi
t_timing "$NODES" | sed 's/^/     /'
