# shellcheck shell=bash
# Cluster tests, area "mpi" (run: tests/cluster/run mpi).
# MPI inside the container across nodes (PMIx and PMI2).

# Images from ci/build-mpi-images (Open MPI 4.1 + PMIx, MPICH 4.0 + PMI2), with
# tests/mpi/mpitest.c built inside; the host build of the same program too.
MPI_SRC=${SIFRUN_MPI_IMAGES:-$REPO/target/mpi-images}
# How steps name their image. Slurm 24.11 (and the current source) gives a step that has
# `--container` a container record even without oci.conf, and their PMIx
# plugin then puts its server socket in that record's (empty) spool
# directory: PMIx steps must name the image with the plugin's own
# `--sif-image` there (docs/admin-guide.md; ci/slurm-versions sets this).
MPI_IMAGE_OPTION=${SIFRUN_MPI_IMAGE_OPTION:-container}
if [[ -f $MPI_SRC/openmpi.sif && -f $MPI_SRC/mpich.sif ]]; then
    MPI=$WORK/mpi; mkdir -p "$MPI"
    cp "$MPI_SRC"/{openmpi.sif,mpich.sif,host-openmpi-mpitest} "$MPI/"
    chmod 755 "$MPI" "$MPI/host-openmpi-mpitest"; chmod 644 "$MPI"/*.sif
    OMPI=$MPI/openmpi.sif MPICH=$MPI/mpich.sif
    ok_lines() { grep -c "^rank [0-9]* of $2 on node[12] $1 ok$" <<<"$LAST"; }
    # Debian's Slurm 26.05 is built without mpi/pmix: its PMIx checks are
    # skipped by name, never passed.
    HAVE_PMIX=0; as_user srun --mpi=list 2>&1 | grep -qw pmix && HAVE_PMIX=1
    pmix_check() { if ((HAVE_PMIX)); then check "$@"; else skip "$1" "this Slurm has no mpi/pmix plugin"; fi; }
    # pmix4_check NAME WHY-NOT-ON-PMIX-5 COMMAND...: a check of PMIx 4's behaviour.
    pmix4_check() {
        local name=$1 why=$2; shift 2
        if ((HAVE_PMIX && !PMIX4)); then skip "$name" "$why"; else pmix_check "$name" "$@"; fi
    }

    run srun --mpi=pmix -N2 -n4 --$MPI_IMAGE_OPTION="$OMPI" mpitest allreduce
    pmix_check "Open MPI + PMIx, -N2 -n4: allreduce correct on every rank" test "$(ok_lines allreduce 4)" -eq 4
    run srun --mpi=pmix -N2 -n8 --$MPI_IMAGE_OPTION="$OMPI" mpitest ring
    pmix_check "Open MPI + PMIx, -N2 -n8: ring across both nodes" \
        bash -c '[[ $(grep -c " ring ok$" <<<"$1") -eq 8 && "$1" == *"on node1"* && "$1" == *"on node2"* ]]' _ "$LAST"
    run srun --mpi=pmix -N1 --$MPI_IMAGE_OPTION="$OMPI" sh -c 'echo "$PMIX_SERVER_TMPDIR"; ls "$PMIX_SERVER_TMPDIR" && echo listed'
    # PMIx 4 (Slurm's mpi/pmix_v4) keeps a shared-memory dstore there; PMIx 5 does not.
    PMIX4=0; compgen -G "/usr/lib/*/slurm-wlm/mpi_pmix_v4.so" >/dev/null && PMIX4=1
    dstore=""; ((PMIX4)) && dstore=pmix_dstor_ds21_
    pmix_check "the PMIx server directory (with its shared-memory dstore) is visible at the same path" \
        bash -c '[[ "$1" == /var/tmp/sifrun-cluster/spool/node*/pmix.* && "$1" == *listed && "$1" == *"$2"* ]]' _ "$LAST" "$dstore"
    # Ranks that end at different times (issue 21): every rank notes the
    # owner of the step's PMIx application directory (slurmstepd makes it
    # for the job user and group root when no container code runs), then
    # each node's first rank outlives the others by 3 s and looks for it
    # again: Slurm removes it only when the step ends.
    cat > "$MPI/stagger.sh" <<'SH'
d=$(ls -d /tmp/spmix_appdir_* 2>/dev/null | head -1)
echo "rank $SLURM_PROCID: start $(stat -c %U:%G "$d" 2>&1)"
"$@" allreduce >/dev/null || echo "rank $SLURM_PROCID: mpi failed"
[ "$SLURM_LOCALID" = 0 ] || exit 0
sleep 3
if [ -d "$d" ]; then echo "rank $SLURM_PROCID: later present"; else echo "rank $SLURM_PROCID: later gone"; fi
SH
    chmod 755 "$MPI/stagger.sh"
    slurmd_errors() { cat /var/tmp/sifrun-cluster/log/slurmd-node*.log | grep -c "error:" || true; }
    errors_before=$(slurmd_errors)
    run srun --mpi=pmix -N2 -n4 --container="$OMPI" sh "$MPI/stagger.sh" mpitest
    stagger=$LAST
    LAST=$(cat /var/tmp/sifrun-cluster/log/slurmd-node*.log | grep "error:" | tail -n +$((errors_before + 1)))
    # PMIx 5's server removes the application directory at the node's first
    # finalize; Slurm then logs that it could not remove it.
    pmix4_check "a PMIx step with --container=img.sif logs no error on any node" \
        "PMIx 5 removes the application directory before Slurm does (Failed to remove ...)" \
        test "$(slurmd_errors)" = "$errors_before"
    LAST=$stagger
    pmix_check "the step's PMIx application directory belongs to the job user and group root, as without a container" \
        test "$(grep -c "start $TEST_USER:root$" <<<"$LAST")" -eq 4
    pmix4_check "a PMIx rank that outlives the others on its node still has the step's PMIx directory" \
        "PMIx 5 removes it when the node's first rank finalizes, with or without a container" \
        test "$(grep -c "later present$" <<<"$LAST")" -eq 2

    run srun --mpi=pmi2 -N2 -n4 --$MPI_IMAGE_OPTION="$MPICH" mpitest allreduce
    check "MPICH + PMI2, -N2 -n4: allreduce correct on every rank" test "$(ok_lines allreduce 4)" -eq 4
    run srun --mpi=pmi2 -N2 -n8 --$MPI_IMAGE_OPTION="$MPICH" mpitest ring
    check "MPICH + PMI2, -N2 -n8: ring" test "$(grep -c ' ring ok$' <<<"$LAST")" -eq 8

    # Two ranks on one node can only talk over shared memory here (btl
    # self,vader): the test maps the peer's vader segment and uses CMA
    # single-copy, which needs both ranks in one container (same /dev/shm,
    # same mount namespace).
    run srun --mpi=pmix -N1 -n2 --$MPI_IMAGE_OPTION="$OMPI" env OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 mpitest shm
    pmix_check "ranks on one node use shared memory (vader, CMA single copy)" \
        test "$(grep -c 'shm ok pml=ob1 btl=self,vader single_copy=cma segments_mapped=2' <<<"$LAST")" -eq 2

    # An image whose own environment sets PMIX_* to wrong values.
    if [[ ! -f $MPI_SRC/openmpi-badenv.sif ]]; then
        off=$("$SIFRUN" inspect --json "$OMPI" | python3 -c 'import json,sys; d=json.load(sys.stdin); print([o for o in d["objects"] if o["type"]=="partition"][0]["offset"])')
        rm -rf "$MPI/rootfs"; unsquashfs -q -o "$off" -d "$MPI/rootfs" "$OMPI" >/dev/null
        "$SIFRUN" build --force "$MPI/rootfs" -o "$MPI_SRC/openmpi-badenv.sif" \
            --env PMIX_SERVER_URI41=tcp4://127.0.0.1:1 --env PMIX_NAMESPACE=bogus --env PMIX_RANK=77 \
            --env PMIX_SECURITY_MODE=none --env PMIX_MCA_psec=bogus --env PMIX_SERVER_TMPDIR=/nonexistent >/dev/null 2>&1
        rm -rf "$MPI/rootfs"
    fi
    cp "$MPI_SRC/openmpi-badenv.sif" "$MPI/"; chmod 644 "$MPI/openmpi-badenv.sif"
    run srun --mpi=pmix -N2 -n4 --$MPI_IMAGE_OPTION="$MPI/openmpi-badenv.sif" mpitest allreduce
    pmix_check "an image setting PMIX_* to wrong values still works (host values win)" test "$(ok_lines allreduce 4)" -eq 4

    run srun --mpi=pmix -N2 -n4 "$MPI/host-openmpi-mpitest" allreduce
    if ldd "$MPI/host-openmpi-mpitest" | grep -q "not found"; then
        skip "--mpi=pmix without a container still works (plugin does nothing)" "no Open MPI on this machine"
    else
        pmix_check "--mpi=pmix without a container still works (plugin does nothing)" test "$(ok_lines allreduce 4)" -eq 4
    fi
    run srun --mpi=none -N2 sh -c 'test -d /var/tmp/sifrun-cluster && echo host'
    check "--mpi=none without a container still works" test "$(grep -c '^host$' <<<"$LAST")" -eq 2
    # (This cluster's spool lies under /var/tmp, which every container
    # binds like /tmp: what must not exist is a bind of its own.)
    run srun --mpi=none -N1 --$MPI_IMAGE_OPTION="$OMPI" sh -c 'grep -c " /var/tmp/sifrun-cluster/spool" /proc/self/mountinfo || true'
    check "steps without PMIx get no bind of the Slurm spool directory" test "$LAST" = 0

    # The PMIx directories are bound for the job user's sake, so resolved with
    # the user's rights: a spool the user cannot reach on the node is not
    # shown in the container either (issue 23).
    SPOOL_PARENT=$(dirname "$(ls -d /var/tmp/sifrun-cluster/spool/node1)")
    spool_mode=$(stat -c %a "$SPOOL_PARENT")
    chmod 700 "$SPOOL_PARENT"
    run srun --mpi=pmix -N1 -w node1 --$MPI_IMAGE_OPTION="$OMPI" ls "$SPOOL_PARENT/node1"
    chmod "$spool_mode" "$SPOOL_PARENT"
    pmix_check "attack: a PMIx step never shows a spool directory the user cannot reach on the node" \
        bash -c '[[ "$1" == *"sifrun: error:"*"the step'"'"'s PMIx directory"*"permission denied"* ]] && ! grep -q "^pmix\." <<<"$1"' _ "$LAST"

    # A rank that crashes: srun reports it, the step ends, nothing stale.
    started=$SECONDS
    # --kill-on-bad-exit: without it srun (as outside containers) waits for
    # the surviving ranks, which block in MPI forever.
    run srun --mpi=pmix -K1 -N2 -n4 --$MPI_IMAGE_OPTION="$OMPI" sh -c '[ "$SLURM_PROCID" = 2 ] && kill -SEGV $$; exec mpitest allreduce'
    rc=$?
    LAST="exit $rc after $((SECONDS - started)) s: $LAST"
    pmix_check "a crashing rank fails the step promptly and srun names it" \
        bash -c '[[ $1 -ne 0 && $2 -lt 50 && "$3" == *"task 2: Segmentation fault"* ]]' _ "$rc" "$((SECONDS - started))" "$LAST"

    cat > "$JOBDIR/mpi.sh" <<'JOB'
#!/bin/sh
srun --mpi=pmix -N2 -n4 mpitest allreduce
JOB
    chmod 755 "$JOBDIR/mpi.sh"
    (cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N2 -n4 -W --$MPI_IMAGE_OPTION="$OMPI" -o "$JOBDIR/mpi.out" "$JOBDIR/mpi.sh")
    LAST=$(cat "$JOBDIR/mpi.out" 2>&1)
    pmix_check "sbatch --container: srun --mpi=pmix steps inside the job run MPI in the image" test "$(ok_lines allreduce 4)" -eq 4

    # The shipped mpi hook (etc/sifrun/hooks.d/mpi.sh): the node's MPICH in
    # place of the image's, after an ABI check (where the node has MPICH:
    # the Slurm release roots of ci/slurm-versions do not).
    if ldconfig -p | grep -q "libmpich.so.12 "; then
        H=/etc/sifrun-test-mpi
        rm -rf "$H"; mkdir -p "$H/hooks.d"; cp "$REPO/etc/sifrun/hooks.d/mpi.sh" "$H/hooks.d/"
        chmod 755 "$H" "$H/hooks.d" "$H/hooks.d/mpi.sh"
        cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.orig"
        undo 'rm -rf /etc/sifrun-test-mpi; mv "$WORK/sifrun.toml.orig" "$WORK/sifrun.toml"'
        printf 'hooks_dir = "%s"\nuser_hooks = ["mpi"]\n' "$H/hooks.d" >> "$WORK/sifrun.toml"
        run srun --mpi=pmi2 -N2 -n4 --$MPI_IMAGE_OPTION="$MPICH" --container-hooks=mpi mpitest allreduce
        check "mpi hook: an MPICH image runs MPI across nodes on the node's MPICH library" test "$(ok_lines allreduce 4)" -eq 4
        host_mpich=$(readlink -f "$(ldconfig -p | awk '$1 == "libmpich.so.12" { print $NF; exit }')")
        run srun -N1 --$MPI_IMAGE_OPTION="$MPICH" --container-hooks=mpi sh -c 'echo "$(grep -c " /usr/lib/x86_64-linux-gnu/libmpich.so.12" /proc/self/mountinfo) $MPI_HOOK_HOST_LIB"'
        check "mpi hook: the image's libmpich.so.12 is the node's, bound read-only over it" test "$LAST" = "1 $host_mpich"
        run srun -N1 --$MPI_IMAGE_OPTION="$OMPI" --container-hooks=mpi sh -c 'echo "ran ${MPI_HOOK_HOST_LIB:-without}"'
        check "mpi hook: an image without an MPICH-ABI library is left alone" test "$LAST" = "ran without"
        # An image built against a newer MPICH ABI than the node's.
        mkdir -p "$WORK/rootfs-newmpi"; cp -a "$WORK/rootfs/." "$WORK/rootfs-newmpi/"
        mkdir -p "$WORK/rootfs-newmpi/usr/lib/x86_64-linux-gnu"
        : > "$WORK/rootfs-newmpi/usr/lib/x86_64-linux-gnu/libmpich.so.12.99.0"
        ln -s libmpich.so.12.99.0 "$WORK/rootfs-newmpi/usr/lib/x86_64-linux-gnu/libmpich.so.12"
        "$SIFRUN" build --force "$WORK/rootfs-newmpi" -o "$WORK/images/newmpi.sif" >/dev/null; chmod 644 "$WORK/images/newmpi.sif"
        run srun -N1 --$MPI_IMAGE_OPTION="$WORK/images/newmpi.sif" --container-hooks=mpi sh -c 'echo RAN'
        check "mpi hook: an image whose MPICH ABI is newer than the node's fails in one line" \
            bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"site hook mpi failed (exit 1): mpi hook: the image"*"libmpich.so.12.99.0, ABI 12.99) cannot use the node"* && "$1" != *RAN* ]]' _ "$LAST"
        run_undo
    else
        skip "mpi hook: an MPICH image runs MPI across nodes on the node's MPICH library" "no MPICH library on this node"
        skip "mpi hook: the image's libmpich.so.12 is the node's, bound read-only over it" "no MPICH library on this node"
        skip "mpi hook: an image without an MPICH-ABI library is left alone" "no MPICH library on this node"
        skip "mpi hook: an image whose MPICH ABI is newer than the node's fails in one line" "no MPICH library on this node"
    fi
    check "no loop device or mount left after the MPI runs" settled
else
    fail "MPI tests" "no MPI images in $MPI_SRC (run ci/build-mpi-images)"
fi
