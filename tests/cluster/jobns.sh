# shellcheck shell=bash
# Cluster tests, area "jobns" (run: tests/cluster/run jobns).
# Slurm's per-job mount namespace (job_container/tmpfs, namespace/tmpfs,
# namespace/linux): the job's private /tmp (and /dev/shm, where the job has
# its own) is the container's, not the node's. The area restarts the
# cluster with the plugin Slurm has, and restarts it plain at the end.

JOBNS_KIND=tmpfs
compgen -G "/usr/lib/*/slurm-wlm/namespace_linux.so" >/dev/null && JOBNS_KIND=linux
SIFRUN_JOB_NAMESPACE=$JOBNS_KIND cluster_up
echo "     (Slurm's $(sed -n 's/^\(JobContainerType\|NamespaceType\)=//p' /etc/slurm/slurm.conf), job_namespace = auto)"

# A file a host step of the job leaves in /tmp, read by a container step of
# the same job on each node, and the other way round.
run salloc -Q -N2 sh -c '
    srun -N2 sh -c "hostname > /tmp/from-host; echo job \$SLURM_JOB_ID > /tmp/job-id"
    srun -N2 --container='"$IMG"' sh -c "echo \$(cat /tmp/from-host) sees \$(cat /tmp/job-id); echo in-container > /tmp/from-container"
    srun -N2 sh -c "echo host reads \$(cat /tmp/from-container) on \$(hostname)"'
check "a container step sees what a host step of the job left in the job's /tmp, on each node" \
    bash -c '[[ "$1" == *"node1 sees job "* && "$1" == *"node2 sees job "* ]]' _ "$LAST"
check "a host step of the job sees what a container step wrote to /tmp" \
    bash -c '[[ "$1" == *"host reads in-container on node1"* && "$1" == *"host reads in-container on node2"* ]]' _ "$LAST"
check "the container's /tmp is not the node's /tmp" \
    bash -c '! ls /proc/"$1"/root/tmp/from-container 2>/dev/null' _ "$(slurmd_pid_of node1)"

run srun -N1 -w node1 --container="$IMG" sh -c 'ls /tmp/from-host /tmp/from-container 2>&1; echo done'
check "another job's container does not see the first job's /tmp" \
    bash -c '[[ $(grep -c "No such file" <<<"$1") -eq 2 && "$1" == *done ]]' _ "$LAST"

# /dev/shm: the job's own where Slurm makes one (namespace/linux; the
# tmpfs plugins from 23.02), else a fresh one per step as always.
job_shm=$(as_user srun -Q -N1 -w node1 stat -c %d:%i /dev/shm 2>/dev/null)
node_shm=$(stat -c %d:%i "/proc/$(slurmd_pid_of node1)/root/dev/shm")
if [[ -n $job_shm && $job_shm != "$node_shm" ]]; then
    run salloc -Q -N1 -w node1 sh -c '
        srun sh -c "echo shared > /dev/shm/from-host"
        srun --container='"$IMG"' cat /dev/shm/from-host'
    check "the container's /dev/shm is the job's own" bash -c '[[ "$1" == *shared* ]]' _ "$LAST"
else
    skip "the container's /dev/shm is the job's own" "this Slurm's $JOBNS_KIND plugin keeps the node's /dev/shm"
fi

# The working directory under the job's /tmp: Slurm enters it in the job's
# namespace, and so does the container.
run salloc -Q -N1 -w node1 sh -c '
    srun sh -c "mkdir -p /tmp/work/sub && echo here > /tmp/work/sub/f"
    srun --chdir=/tmp/work/sub --container='"$IMG"' sh -c "pwd; cat f"'
check "a working directory inside the job's /tmp is found in the container" \
    bash -c '[[ "$1" == *"/tmp/work/sub"*here* ]]' _ "$LAST"

# MPI in the job's namespace: PMIx keeps its client directories under
# TmpFS (/tmp), PMI2 needs nothing there.
MPI_SRC=${SIFRUN_MPI_IMAGES:-$REPO/target/mpi-images}
MPI_IMAGE_OPTION=${SIFRUN_MPI_IMAGE_OPTION:-container}
if [[ -f $MPI_SRC/openmpi.sif && -f $MPI_SRC/mpich.sif ]]; then
    install -d -m 0755 "$WORK/jobns-mpi"
    install -m 0644 "$MPI_SRC"/{openmpi,mpich}.sif "$WORK/jobns-mpi/"
    if as_user srun --mpi=list 2>&1 | grep -qw pmix; then
        run srun --mpi=pmix -N2 -n4 --$MPI_IMAGE_OPTION="$WORK/jobns-mpi/openmpi.sif" mpitest allreduce
        check "Open MPI + PMIx across two nodes in the job's namespace" \
            test "$(grep -c '^rank [0-9] of 4 on node[12] allreduce ok$' <<<"$LAST")" -eq 4
    else
        skip "Open MPI + PMIx across two nodes in the job's namespace" "this Slurm has no mpi/pmix plugin"
    fi
    run srun --mpi=pmi2 -N2 -n4 --$MPI_IMAGE_OPTION="$WORK/jobns-mpi/mpich.sif" mpitest allreduce
    check "MPICH + PMI2 across two nodes in the job's namespace" \
        test "$(grep -c '^rank [0-9] of 4 on node[12] allreduce ok$' <<<"$LAST")" -eq 4
else
    fail "MPI in the job's namespace" "no MPI images in $MPI_SRC (run ci/build-mpi-images)"
fi

# A wrong job_namespace: one clear line, no container, nothing left behind.
cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.plain"
undo "mv -f '$WORK/sifrun.toml.plain' '$WORK/sifrun.toml'"
echo 'job_namespace = "/var/tmp/sifrun-no-such-dir/%j/.ns"' >>"$WORK/sifrun.toml"
run srun -N1 -w node1 --container="$IMG" true
check "a job_namespace that names no namespace fails the step with one line" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"/var/tmp/sifrun-no-such-dir/"*"/.ns: does not exist"* ]]' _ "$LAST"
# A file the user can write where the namespace should be: refused.
install -d -m 0777 /var/tmp/sifrun-no-such-dir
undo "rm -rf /var/tmp/sifrun-no-such-dir"
# shellcheck disable=SC2016
run salloc -Q -N1 -w node1 sh -c 'mkdir -p /var/tmp/sifrun-no-such-dir/$SLURM_JOB_ID && : > /var/tmp/sifrun-no-such-dir/$SLURM_JOB_ID/.ns && srun --container='"$IMG"' true'
check "a user's file in place of the job's namespace is refused" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"not a mount namespace file"* ]]' _ "$LAST"
mv -f "$WORK/sifrun.toml.plain" "$WORK/sifrun.toml"
rm -rf /var/tmp/sifrun-no-such-dir

check "no loop device or mount left after the job namespace steps" settled
end_user_jobs
cluster_up
