# shellcheck shell=bash
# Cluster tests, area "cache" (run: tests/cluster/run cache).
# The node cache of mounted images: one mount per image file per node,
# reused by later steps, unmounted when idle, keyed by file identity.

settled
run srun -N1 -w node1 --container="$IMG" true
first=$(losetup -n -O NAME -j "$IMG")
run srun -N1 -w node1 --container="$IMG" true
LAST="mounts on node1: $(node_mounts node1), loop devices: $(losetup -n -O NAME -j "$IMG" | tr '\n' ' ') (first: $first)"
check "a later step reuses the node's mount (same loop device, one mount)" \
    bash -c '[[ $1 -eq 1 && -n $2 && $(losetup -n -O NAME -j "$3") == "$2" ]]' _ "$(node_mounts node1)" "$first" "$IMG"
LAST=$(nsenter -t "$(slurmd_pid_of node1)" -m "$SIFRUN" cache list --json 2>&1)
check "sifrun cache list on the node names the image, mounted and idle" \
    bash -c '[[ "$1" == *"\"mounted\": true"* && "$1" == *"\"in_use\": false"* && "$1" == *"busybox.sif"* ]]' _ "$LAST"
check "the idle image is unmounted after cache_idle_secs" settled

# A file rewritten in place is a new image: never served from the old mount.
cp "$IMG" "$WORK/images/changing.sif"; chmod 644 "$WORK/images/changing.sif"
run srun -N1 -w node1 --container="$WORK/images/changing.sif" cat /etc/os-release
before=$LAST
mkdir -p "$WORK/rootfs2"; cp -a "$WORK/rootfs/." "$WORK/rootfs2/"
echo 'PRETTY_NAME="rewritten image"' > "$WORK/rootfs2/etc/os-release"
"$SIFRUN" build --force "$WORK/rootfs2" -o "$WORK/images/v2.sif" >/dev/null
cat "$WORK/images/v2.sif" > "$WORK/images/changing.sif"
run srun -N1 -w node1 --container="$WORK/images/changing.sif" cat /etc/os-release
check "an image rewritten in place gets a fresh mount (cache keyed by file identity)" \
    bash -c '[[ "$1" == *"sifrun busybox demo"* && "$2" == *"rewritten image"* ]]' _ "$before" "$LAST"
