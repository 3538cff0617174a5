# shellcheck shell=bash
# Cluster tests, area "apptainer" (run: tests/cluster/run apptainer).
# Images built by the real Apptainer (ci/build-apptainer-images) under
# srun: their environment lives in /.singularity.d/env scripts, evaluated
# once per node as the job user and applied to every task.

APP_SRC=${SIFRUN_APPTAINER_IMAGES:-$REPO/target/apptainer-images}
if [[ -f $APP_SRC/docker.sif && -f $APP_SRC/def.sif && -f $APP_SRC/apps.sif && -f $APP_SRC/overlay-small.sif ]]; then
    APPT=$WORK/apptainer; mkdir -p "$APPT"; chmod 755 "$APPT"
    cp "$APP_SRC"/{docker,def,apps,overlay,overlay-small}.sif "$APPT/"; chmod 644 "$APPT"/*.sif

    run srun -N2 -n4 --container="$APPT/docker.sif" myprog rank
    check "an Apptainer image's program is found on its PATH, with its LD_LIBRARY_PATH, on every rank" \
        test "$(grep -c '^myprog: MYVAR=docker-value LD=/opt/app/lib:/.singularity.d/libs args=rank$' <<<"$LAST")" -eq 4

    run srun -N2 -n4 --container="$APPT/def.sif" sh -c 'echo "$SLURM_PROCID $GREETING|$DEF_DEFAULT|${PATH%%:*}"'
    check "a definition file's %environment reaches every task, SLURM_PROCID stays per rank" \
        test "$(sort <<<"$LAST" | tr '\n' ' ')" = "0 hello from %environment|unset-before|/opt/def/bin 1 hello from %environment|unset-before|/opt/def/bin 2 hello from %environment|unset-before|/opt/def/bin 3 hello from %environment|unset-before|/opt/def/bin "

    LAST=$(as_user env APPTAINERENV_REQUESTED=yes APPTAINERENV_PREPEND_PATH=/pre APPTAINER_BIND=/x MYVAR=host \
        timeout 60 srun -N1 --container="$APPT/docker.sif" \
        sh -c 'echo "$REQUESTED ${PATH%%:*} $MYVAR $APPTAINER_NAME ${APPTAINER_BIND-unset} ${APPTAINERENV_REQUESTED-unset}"' 2>&1 |
        grep -v "^srun: job [0-9]* \(queued\|has been allocated\)")
    check "APPTAINERENV_X from the job sets X over the image; Apptainer's own variables stay out" \
        test "$LAST" = "yes /pre docker-value docker.sif unset unset"

    # SCIF apps: --container-app gives every task the app's environment.
    run srun -N2 -n4 --container="$APPT/apps.sif" --container-app=hello \
        sh -c 'echo "$SLURM_PROCID $(hello-helper) $HELLO_VAR $APPTAINER_APPNAME"'
    check "--container-app: the app's program and lib/ on every rank, with its %appenv" \
        test "$(sort <<<"$LAST" | tr '\n' ' ')" = "$(for r in 0 1 2 3; do printf '%s hello-helper: LD=/scif/apps/hello/lib:/opt/app/lib:/.singularity.d/libs from %%appenv hello ' $r; done)"
    run srun -N1 --container="$APPT/apps.sif" --container-app=nope true
    check "--container-app naming no app fails in one line that lists the apps" \
        bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"no such app (its apps: hello, tools)"* ]]' _ "$LAST"

    # An overlay partition (apptainer overlay create), read-only under srun.
    run srun -N2 -n4 --container="$APPT/overlay.sif" \
        sh -c 'echo "$(cat /opt/data/x.txt) $(stat -c %u /opt/data/x.txt) $(test -e /opt/app/bin/myprog && echo present || echo deleted)"'
    check "an overlay partition's files reach every rank, unpacked as the job user; what it deleted stays deleted" \
        test "$(sort -u <<<"$LAST") $(wc -l <<<"$LAST")" = "from-the-overlay $(id -u "$TEST_USER") deleted 4"

    # Signed after its overlay was written, by a key partition "secure"
    # allows, and owned by the user: the node verifies a root-only copy and
    # the overlay is read from that copy.
    cp "$APPT/overlay-small.sif" "$APPT/overlay-signed.sif"
    "$SIFRUN" sign --key "$WORK/a-private.asc" "$APPT/overlay-signed.sif" >/dev/null 2>&1
    chown "$TEST_USER" "$APPT/overlay-signed.sif"
    secure --container="$APPT/overlay-signed.sif" cat /opt/data/x.txt
    check "under an ECL, a signed image's overlay partition is read from the verified copy" \
        test "$LAST" = "from-the-small-overlay"
    cp "$APPT/overlay-small.sif" "$APPT/overlay-unsigned.sif"; chown "$TEST_USER" "$APPT/overlay-unsigned.sif"
    secure --container="$APPT/overlay-unsigned.sif" cat /opt/data/x.txt
    check "under an ECL, an image with an unsigned overlay partition is refused" refused overlay-unsigned.sif unsigned

    # --container-entrypoint (pyxis' semantics): the image's OCI
    # entrypoint runs once per node before the tasks, which get what it
    # exported.
    if [[ -f $APP_SRC/entry.sif ]]; then
        cp "$APP_SRC/entry.sif" "$APPT/"; chmod 644 "$APPT/entry.sif"
        mkdir -p "$APPT/entry-log"; chown "$TEST_USER" "$APPT/entry-log"; rm -f "$APPT/entry-log/ran"
        run srun -N2 -n4 --container="$APPT/entry.sif" --container-entrypoint \
            --container-mounts="$APPT/entry-log:/entry-log" sh -c 'echo "$ENTRY_VAR|$IMG_VAR"'
        LAST+=" | entrypoint ran on: $(sort "$APPT/entry-log/ran" 2>/dev/null | tr '\n' ' ')"
        check "--container-entrypoint: the entrypoint ran once per node and every rank has what it exported" \
            test "$LAST" = "$(printf 'set-by-entrypoint|entry saw from-image\n%.0s' 1 2 3 4) | entrypoint ran on: node1 node2 "
        run srun -N1 --container="$APPT/entry.sif" sh -c 'echo "${ENTRY_VAR-unset}|$IMG_VAR"'
        check "without --container-entrypoint the entrypoint does not run (the image's own variables stay)" \
            test "$LAST" = "unset|from-image"
        LAST=$(as_user env SIFRUN_CONTAINER_ENTRYPOINT=1 timeout 60 srun -N1 --container="$APPT/entry.sif" \
            sh -c 'echo "$ENTRY_VAR"' 2>&1)
        check "SIFRUN_CONTAINER_ENTRYPOINT=1 in the job's environment asks for it too" test "$LAST" = "set-by-entrypoint"
        run srun -N1 --container="$APPT/docker.sif" --container-entrypoint true
        check "an entrypoint that never runs its arguments fails the step in one line that says so" \
            bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"ended without running the command it was given"* && "$1" == *"myprog: MYVAR="* ]]' _ "$LAST"
        run srun -N1 --container="$APPT/def.sif" --container-entrypoint true
        check "--container-entrypoint on an image with a hand-written runscript is refused in one line" \
            bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"is not an OCI entrypoint"* ]]' _ "$LAST"
    else
        fail "--container-entrypoint" "no entry.sif in $APP_SRC (run ci/build-apptainer-images again)"
    fi

    # A hostile image: its environment script hangs. The step fails with
    # one line after the evaluation's time limit, nothing is left behind.
    mkdir -p "$APPT/hang-root"; cp -a "$WORK/rootfs/." "$APPT/hang-root/"
    mkdir -p "$APPT/hang-root/.singularity.d/env"
    echo 'sleep 600' > "$APPT/hang-root/.singularity.d/env/50-hang.sh"
    "$SIFRUN" build --force "$APPT/hang-root" -o "$APPT/hang.sif" >/dev/null 2>&1; chmod 644 "$APPT/hang.sif"
    started=$SECONDS
    run srun -N1 -w node1 --container="$APPT/hang.sif" sh -c 'echo RAN'
    LAST+=" (after $((SECONDS - started)) s)"
    check "attack: an image whose environment script hangs fails the step in one line, within its limit" \
        bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"did not finish within 10 s"* ]] && ! grep -q "^RAN" <<<"$1"' _ "$LAST"
    check "... and leaves no script process behind" gone_within 5 -u "$TEST_USER" -f 'sleep 600'

    # A batch script in an Apptainer image: its environment (a library
    # path of the image's own) is the script's, and the host's Slurm
    # commands still load only the host's libraries.
    printf '%s\n' '#!/bin/sh' 'echo "batch: MYVAR=$MYVAR LD=$LD_LIBRARY_PATH"' 'srun -N2 myprog step' >"$JOBDIR/job-appt.sh"
    chmod 755 "$JOBDIR/job-appt.sh"
    (cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N2 -W --container="$APPT/docker.sif" \
        --container-batch -o "$JOBDIR/out-appt.txt" "$JOBDIR/job-appt.sh")
    LAST=$(cat "$JOBDIR/out-appt.txt" 2>&1)
    check "sbatch --container-batch with an Apptainer image: the script gets its environment, and srun works under its LD_LIBRARY_PATH" \
        bash -c '[[ "$1" == *"batch: MYVAR=docker-value LD=/opt/app/lib:/.singularity.d/libs"* && $(grep -c "^myprog: MYVAR=docker-value .* args=step$" <<<"$1") -eq 2 ]]' _ "$LAST"
    check "no loop device or mount left after the Apptainer images" settled
else
    fail "Apptainer image tests" "no images in $APP_SRC (run ci/build-apptainer-images)"
fi
