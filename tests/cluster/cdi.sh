# shellcheck shell=bash
# Cluster tests, area "cdi" (run: tests/cluster/run cdi).
# Devices from CDI specs (for the stand-in GPUs, in the shape
# `nvidia-ctk cdi generate` writes) and the site's hooks.

T=/etc/sifrun-test   # root's and closed to others all the way up, like /etc/cdi
rm -rf "$T"; mkdir -p "$T/cdi" "$T/hooks.d" "$T/bin" "$T/lib" "$T/thing"
undo 'rm -rf /etc/sifrun-test'
for g in 0 1; do mkdir -p "$T/gpu$g"; echo "gpu$g" > "$T/gpu$g/id"; done
echo "stand-in driver" > "$T/lib/libcuda.so.550.1"
echo "thing data" > "$T/thing/x"
# A stand-in for `nvidia-cdi-hook create-symlinks`: the container's root
# comes from the OCI state on stdin (its bundle's config.json).
cat > "$T/bin/cdi-hook" <<'SH'
#!/bin/sh
set -e
bundle=$(sed 's/.*"bundle":"\([^"]*\)".*/\1/')
root=$(sed 's/.*"path":"\([^"]*\)".*/\1/' "$bundle/config.json")
[ "$1" = create-symlinks ] && [ "$2" = --link ]
target=${3%%::*}; link=${3#*::}
ln -sfn "$target" "$root$link"
SH
gpu_entry() { # N: the spec entry of stand-in GPU N
    printf -- '- name: "%s"\n  containerEdits:\n    deviceNodes:\n    - path: /dev/nvidia%s\n' "$1" "$1"
    printf '    env:\n    - CDI_TEST_GPU=%s\n' "$1"
    printf '    mounts:\n    - hostPath: %s/gpu%s\n      containerPath: /opt/gpu%s\n      options: [ro, nosuid, nodev, bind]\n' "$T" "$1" "$1"
}
{
    printf -- '---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n'
    gpu_entry 0; gpu_entry 1
    cat <<YAML
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
  - path: /dev/nvidia-uvm-tools
  mounts:
  - hostPath: $T/lib/libcuda.so.550.1
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.1
    options: [ro, nosuid, nodev, bind]
  hooks:
  - hookName: createContainer
    path: $T/bin/cdi-hook
    args: [nvidia-cdi-hook, create-symlinks, --link, "libcuda.so.550.1::/usr/lib/x86_64-linux-gnu/libcuda.so.1"]
YAML
} > "$T/cdi/nvidia.yaml"
cat > "$T/cdi/thing.json" <<JSON
{"cdiVersion": "0.6.0", "kind": "sifrun.test/thing", "devices": [
  {"name": "a", "containerEdits": {"env": ["THING=a"],
   "mounts": [{"hostPath": "$T/thing", "containerPath": "/opt/thing", "options": ["ro"]}]}}]}
JSON
# The site's hooks.
cat > "$T/hooks.d/stamp.sh" <<'SH'
#!/bin/sh
if [ "$SIFRUN_HOOK_POINT" = step-end ]; then
    echo "step-end $SIFRUN_JOB_ID" >> /var/tmp/sifrun-cluster-tests/step-end.log
    exit 0
fi
echo "stamped by $SIFRUN_HOOK for job $SIFRUN_JOB_ID of uid $SIFRUN_UID (writable $SIFRUN_WRITABLE)" > "$SIFRUN_ROOTFS/etc/site-stamp"
echo "SITE_HOOK_VAR=from-stamp" >> "$SIFRUN_ENV_FILE"
SH
printf '#!/bin/sh\n[ "$SIFRUN_HOOK_POINT" = setup ] && echo "EXTRA_VAR=extra" >> "$SIFRUN_ENV_FILE"\nexit 0\n' > "$T/hooks.d/extra.sh"
printf '#!/bin/sh\necho "no MPI here" >&2\nexit 3\n' > "$T/hooks.d/fails.sh"
printf '#!/bin/sh\nsleep 600\n' > "$T/hooks.d/hangs.sh"
# A naive hook: it writes through the root without minding the image's
# symlinks (the attack below gives it one that leads to the host).
printf '#!/bin/sh\n[ "$SIFRUN_HOOK_POINT" = setup ] || exit 0\ntouch "$SIFRUN_ROOTFS/usr/lib/plugins/naive-was-here"\n' > "$T/hooks.d/naive.sh"
printf '#!/bin/sh\n[ "$SIFRUN_HOOK_POINT" = setup ] && touch "$SIFRUN_ROOTFS/etc/parthook"\nexit 0\n' > "$T/hooks.d/parthook.sh"
cp "$REPO/etc/sifrun/hooks.d/pytorch.sh" "$T/hooks.d/"   # the example sifrun ships
chmod -R go-w "$T"; chmod 755 "$T"/bin/* "$T"/hooks.d/*; chmod 644 "$T"/cdi/*
cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.orig"
undo 'mv "$WORK/sifrun.toml.orig" "$WORK/sifrun.toml"'
cat >> "$WORK/sifrun.toml" <<TOML
cdi_dirs = ["$T/cdi"]
cdi_user_devices = ["sifrun.test/thing=*"]
hooks_dir = "$T/hooks.d"
hooks = ["stamp"]
user_hooks = ["extra", "fails", "hangs", "pytorch", "naive"]
hook_timeout_secs = 3
[partition_hooks]
secure = ["parthook"]
TOML
rm -f /var/tmp/sifrun-cluster-tests/step-end.log

if [[ -c /dev/nvidia0 && -c /dev/nvidia1 ]]; then
    run srun -N1 --gres=gpu:1 --container="$IMG" sh -c 'echo "nodes: $(ls /dev | grep nvidia | tr "\n" " ")"
        echo "ids: $(cat /opt/gpu*/id | tr "\n" " ")"; echo "cdi=$CDI_TEST_GPU nvd=$NVIDIA_VISIBLE_DEVICES cvd=$CUDA_VISIBLE_DEVICES"
        echo "hook: $(readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1) $(cat /usr/lib/x86_64-linux-gnu/libcuda.so.1)"
        ls /.sifrun/gpu 2>&1 | head -1'
    check "CDI: a --gres=gpu:1 step gets its GPU's device node, mount and variable from the spec, and none of the other GPU's" \
        bash -c 'n=$(grep -o "nvidia[01] " <<<"$1" | tr -d "nvida "); [[ $(grep -c "nvidia[01] " <<<"$1") -eq 1 && "$1" == *"nodes: nvidia-uvm nvidia-uvm-tools nvidia$n nvidiactl "* && "$1" == *"ids: gpu$n "* && "$1" == *"cdi=$n nvd=void"* ]]' _ "$LAST"
    check "CDI: the spec's common edits and its createContainer hook (a symlink made in the root as nvidia-cdi-hook does) apply; the built-in driver list does not" \
        bash -c '[[ "$1" == *"hook: libcuda.so.550.1 stand-in driver"* && "$1" == *"/.sifrun/gpu: No such file"* ]]' _ "$LAST"
    run srun -N1 -n2 --gres=gpu:2 --gpus-per-task=1 --container="$IMG" sh -c 'echo "$SLURM_PROCID cvd=$CUDA_VISIBLE_DEVICES $(cat /opt/gpu*/id | tr "\n" " ")"'
    check "CDI: with two GPUs both devices' edits apply, and each task keeps its own CUDA_VISIBLE_DEVICES" \
        bash -c '[[ $(cut -d" " -f2 <<<"$1" | sort -u | wc -l) -eq 2 && $(grep -c "gpu0 gpu1" <<<"$1") -eq 2 ]]' _ "$LAST"
    run srun -N1 --container="$IMG" sh -c 'echo "gpus: $(ls /opt | grep -c gpu) $(ls /dev | grep -c nvidia)"'
    check "CDI: a step without GPUs gets no GPU edits" test "$LAST" = "gpus: 0 0"
    chmod 666 "$T/cdi/nvidia.yaml"
    run srun -N1 --gres=gpu:1 --container="$IMG" true
    chmod 644 "$T/cdi/nvidia.yaml"
    check "attack: a CDI spec others could write fails the step in one line, never applied" \
        bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"nvidia.yaml: must be owned by root and not writable by group or others"* ]]' _ "$LAST"
else
    fail "CDI GPU checks" "no stand-in GPUs (/dev/nvidia0, /dev/nvidia1)"
fi

run srun -N1 --container="$IMG" --container-devices=sifrun.test/thing=a sh -c 'echo "$(cat /opt/thing/x) THING=$THING"'
check "--container-devices: an offered CDI device (a JSON spec) gets its mount and variable" test "$LAST" = "thing data THING=a"
run srun -N1 --container="$IMG" --container-devices=sifrun.test/other=b true
check "--container-devices: a device the site does not offer is refused in one line" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"sifrun.test/other=b is not offered on this cluster (offered: sifrun.test/thing=*)"* ]]' _ "$LAST"

run srun -N2 -n4 --container="$IMG" sh -c 'echo "$(cat /etc/site-stamp) $SITE_HOOK_VAR"'
check "site hook: a file it adds to the root and a variable it leaves reach every task on every node" \
    bash -c '[[ $(grep -c "^stamped by stamp for job [0-9]* of uid '"$TEST_UID"' (writable 0) from-stamp$" <<<"$1") -eq 4 ]]' _ "$LAST"
job=$(grep -o "job [0-9]*" <<<"$LAST" | head -1 | cut -d" " -f2)
sleep 1
check "site hook: it runs again at the step's end, on each node" \
    bash -c '[[ $(grep -c "^step-end $1$" /var/tmp/sifrun-cluster-tests/step-end.log) -eq 2 ]]' _ "$job"
run srun -N1 --container="$IMG" --container-hooks=extra sh -c 'echo "$SITE_HOOK_VAR $EXTRA_VAR"'
check "--container-hooks: an offered hook runs after the site's" test "$LAST" = "from-stamp extra"
run srun -N1 --container="$IMG" --container-hooks=nope true
check "--container-hooks: a hook the site does not offer is refused in one line" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"nope is not offered on this cluster (offered: extra, fails, hangs, pytorch, naive)"* ]]' _ "$LAST"
run srun -N1 --container="$IMG" --container-hooks=fails sh -c 'echo RAN'
check "a site hook that fails fails the step in one line with its last words" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"site hook fails failed (exit 3): no MPI here"* && "$1" != *RAN* ]]' _ "$LAST"
run srun -N1 --container="$IMG" --container-hooks=hangs sh -c 'echo RAN'
check "a site hook that hangs fails the step in one line at its limit" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"site hook hangs did not finish within 3 s"* && "$1" != *RAN* ]]' _ "$LAST"
check "... and nothing it started is left running" gone_within 5 -f 'sleep 600'

# Attack: an image whose /usr/lib/plugins is an absolute symlink to a host
# directory root may write; a root hook writing through it must not reach
# the host (hooks run where every mount but the container's own is
# read-only).
ESCAPE=/var/tmp/sifrun-cluster-tests/hook-escape
rm -rf "$ESCAPE"; mkdir -p "$ESCAPE" "$WORK/rootfs-hookescape"
cp -a "$WORK/rootfs/." "$WORK/rootfs-hookescape/"; mkdir -p "$WORK/rootfs-hookescape/usr/lib"
ln -sfn "$ESCAPE" "$WORK/rootfs-hookescape/usr/lib/plugins"
"$SIFRUN" build --force "$WORK/rootfs-hookescape" -o "$WORK/images/hookescape.sif" >/dev/null; chmod 644 "$WORK/images/hookescape.sif"
run srun -N1 --container="$WORK/images/hookescape.sif" --container-hooks=naive sh -c 'echo RAN'
LAST+=" | host: $(ls "$ESCAPE")"
check "attack: a root hook writing through an image symlink that leads to the host meets a read-only host and fails the step in one line" \
    bash -c '[[ $(grep -c "sifrun: error:" <<<"$1") -eq 1 && "$1" == *"site hook naive failed"*"Read-only file system"* && "$1" == *"| host: " && "$1" != *RAN* ]]' _ "$LAST"

run srun -N2 -n4 --container="$IMG" --container-hooks=pytorch sh -c 'echo "$MASTER_ADDR $MASTER_PORT $WORLD_SIZE $SLURM_JOB_ID"'
check "the shipped pytorch hook gives every task MASTER_ADDR (the first node), MASTER_PORT (enroot's rule) and WORLD_SIZE" \
    bash -c 'n=0; while read -r a p w j; do [[ $a == node1 && $w == 4 && $p == $((49152 + j % 16384)) ]] && n=$((n + 1)); done <<<"$1"; [[ $n -eq 4 ]]' _ "$LAST"

[[ -f $WORK/images/signed-a.sif ]] || signed "$WORK/images/signed-a.sif" a
secure --container="$WORK/images/signed-a.sif" sh -c 'test -e /etc/parthook && echo partition-hook || echo none'
first=$LAST
run srun -N1 -w node1 --container="$IMG" sh -c 'test -e /etc/parthook && echo partition-hook || echo none'
LAST="$first | $LAST"
check "partition hooks run for the partition's jobs only (the partition asked of slurmctld)" test "$LAST" = "partition-hook | none"

run_undo
check "no loop device or mount left after the CDI and hook checks" settled
