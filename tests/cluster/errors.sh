# shellcheck shell=bash
# Cluster tests, area "errors" (run: tests/cluster/run errors).
# Errors: one clear line on srun's stderr, and nothing left behind.

run srun -N1 --container="$WORK/images/missing.sif" true
check "missing image: clear error" grep -q "sifrun: error: .*missing.sif.*No such file" <<<"$LAST"

run srun -N2 -n8 --container="$WORK/images/missing.sif" true
check "a setup error is one line per node, not one per task (8 tasks on 2 nodes: 2 lines)" \
    test "$(grep -c "sifrun: error: .*missing.sif.*No such file" <<<"$LAST")" -eq 2

run srun -N1 --container="$WORK/images/private.sif" true
check "image the user cannot read is refused" grep -qi "sifrun: error: .*private.sif.*permission denied" <<<"$LAST"

run srun -N1 --container="$WORK/images/text.sif" true
check "not a SIF image: clear error" grep -q "sifrun: error: .*text.sif" <<<"$LAST"

# Another user's image, mounted in the node cache by that user's job: the
# cache never lets our user past the read check.
OTHER_USER=sifrun-other
id -u "$OTHER_USER" >/dev/null 2>&1 || useradd --create-home --user-group "$OTHER_USER"
cp "$IMG" "$WORK/images/others.sif"; chown "$OTHER_USER" "$WORK/images/others.sif"; chmod 600 "$WORK/images/others.sif"
other_out=$( (cd /tmp && runuser -u "$OTHER_USER" -- timeout 60 srun -N1 -w node1 --container="$WORK/images/others.sif" sh -c 'id -un; cat /etc/os-release') 2>&1)
run srun -N1 -w node1 --container="$WORK/images/others.sif" true
check "an image cached for its owner's job is still refused to a user who cannot read it" \
    bash -c '[[ "$1" == *"sifrun busybox demo"* && $(grep -ci "sifrun: error: .*others.sif.*permission denied" <<<"$2") -eq 1 && $3 -eq 1 ]]' \
    _ "$other_out" "$LAST" "$(loops_of "$WORK/images/others.sif")"

run srun -N1 --container-mounts=/data:/x:exec true
check "bad --container-mounts refused by srun" grep -q "container-mounts entry" <<<"$LAST"
run srun -N1 --container="$IMG" --container-env= sh -c 'echo RAN'
empty_env=$LAST
run srun -N1 --container="$IMG" --container-env=FOO, sh -c 'echo RAN'
LAST="$empty_env | $LAST"
check "empty --container-env= and an empty entry (FOO,) are refused by srun, as pyxis does" \
    bash -c '[[ $1 == *"--container-env: empty value"* && $1 == *"empty entry in \"FOO,\""* && $1 != *RAN* ]]' _ "$LAST"

run srun -N1 --container="$IMG" --container-mounts="$WORK/private/secret:/s" true
check "bind of a path the user cannot reach is refused" grep -qi "sifrun: error: .*private/secret.*permission denied" <<<"$LAST"

check "no loop device or mount left after failures" settled
