# shellcheck shell=bash
# Cluster tests, area "run" (run: tests/cluster/run run).
# What a user sees: srun --container runs the command in the image, as
# the job user, with the options pyxis users know.

run srun -N2 --container="$IMG" cat /etc/os-release
check "srun --container=img.sif runs inside the image on 2 nodes" \
    test "$(grep -c 'sifrun busybox demo' <<<"$LAST")" -eq 2

# --container=IMAGE.sif reaches the plugin through cli_filter/sifrun, never
# through Slurm's container code (issue 21): no "No oci.conf" from slurmd,
# no container in the step's record, and a relative path is the
# submitting directory's even when srun exports nothing.
oci_errors() { cat /var/tmp/sifrun-cluster/log/slurmd-node*.log | grep -c "No oci.conf" || true; }
before=$(oci_errors)
LAST=$(cd "$(dirname "$IMG")" && runuser -u "$TEST_USER" -- timeout 60 srun -N2 --export=NONE \
    --container="$(basename "$IMG")" sh -c 'test -e /opt/only-in-image.sh && echo "in image, container=${SLURM_CONTAINER:-none}"' 2>&1)
check "srun --container=relative.sif --export=NONE runs in the image (cli_filter/sifrun)" \
    test "$(grep -c '^in image, container=none$' <<<"$LAST")" -eq 2
LAST="No oci.conf lines: before $before, after $(oci_errors)"
check "--container=img.sif steps never reach Slurm's container code (no 'No oci.conf' logged)" \
    test "$(oci_errors)" = "$before"
mkdir -p "$WORK/oci-bundle"
run srun -N1 --container="$WORK/oci-bundle" true
check "--container naming something other than a SIF image is left to Slurm" \
    bash -c '[[ "$1" != *"sifrun:"* && $(cat /var/tmp/sifrun-cluster/log/slurmd-node*.log | grep -c "No oci.conf") -gt $2 ]]' _ "$LAST" "$before"

LAST=$(as_user env SIFRUN_SIF_IMAGE="$WORK/images/text.sif" timeout 60 srun -N1 --container="$IMG" \
    sh -c 'test -e /opt/only-in-image.sh && echo in-image' 2>&1)
check "--container= on the command line wins over SIFRUN_SIF_IMAGE in the environment" test "$LAST" = "in-image"

run srun -N1 --container="$IMG" /opt/only-in-image.sh
check "a command that exists only in the image runs" grep -q "only in the image" <<<"$LAST"

run srun -N1 --container="$IMG" id -u
check "task runs as the job user ($TEST_UID)" test "$LAST" = "$TEST_UID"

run srun -N1 --container="$IMG" sh -c 'grep -E "^(NoNewPrivs|CapEff)" /proc/self/status'
check "no_new_privs set and no effective capabilities" \
    bash -c '[[ "$1" == *"NoNewPrivs:	1"* && "$1" == *"CapEff:	0000000000000000"* ]]' _ "$LAST"

run srun -N1 --container="$IMG" sh -c 'grep " / " /proc/self/mountinfo; touch /probe 2>&1'
check "container root is read-only" grep -q "Read-only file system" <<<"$LAST"

run srun -N1 --container="$IMG" --container-writable sh -c 'awk "\$5 == \"/\" {print \$6}" /proc/self/mountinfo'
check "--container-writable makes the root writable" grep -q "^rw" <<<"$LAST"
run srun -N1 --container="$IMG" --container-writable \
    sh -c 'touch /newfile && mkdir -p /opt/new/dir && mv /newfile /etc/moved && echo "ok $(stat -c %u /) $(stat -c %u /etc/os-release)"'
check "--container-writable: the job user may create, move and remove files anywhere (directories are the user's, files keep their owner)" \
    test "$LAST" = "ok $TEST_UID 0"

# pyxis' --container-mounts grammar: a relative source from the submit
# directory, flags joined with '+'.
LAST=$(cd "$WORK/data" && runuser -u "$TEST_USER" -- timeout 60 srun -N1 --container="$IMG" \
    --container-mounts=./hello.txt:/in.txt:ro+rprivate sh -c 'cat /in.txt; echo x 2>/dev/null >/in.txt || echo read-only' 2>&1)
check "--container-mounts=./file:/dst:ro+rprivate binds the submit directory's file, read-only" \
    test "$LAST" = "host data
read-only"

# More images in one container: a SIF in --container-mounts is mounted
# (read-only, through the node cache, opened as the user), not bound.
mkdir -p "$WORK/datadir/sets"; echo "data from an image" >"$WORK/datadir/sets/hello.txt"
"$SIFRUN" build --force "$WORK/datadir" -o "$WORK/images/data.sif" >/dev/null 2>&1; chmod 644 "$WORK/images/data.sif"
cp "$WORK/images/data.sif" "$WORK/images/data-private.sif"; chmod 600 "$WORK/images/data-private.sif"
run srun -N2 --container="$IMG" --container-mounts="$WORK/images/data.sif:/data" \
    sh -c 'cat /data/sets/hello.txt; touch /data/x 2>/dev/null || echo read-only; cat /etc/os-release | grep -c "sifrun busybox demo"'
check "--container-mounts=data.sif:/data mounts that image beside the main one, read-only, on every node" \
    test "$(sort <<<"$LAST" | uniq -c | awk '{print $1, $2}' | tr '\n' ' ')" = "2 1 2 data 2 read-only "
run srun -N1 --container="$IMG" --container-mounts="$WORK/images/data-private.sif:/data" true
check "a data image the user cannot read is refused in one line" \
    bash -c '[[ $(grep -c "sifrun: error:.*data-private.sif.*permission denied" <<<"$1") -eq 1 ]]' _ "$LAST"

# pyxis' tmpfs: and umount: entries: a fresh tmpfs of the given size, and
# a default mount (the node's /tmp) taken away.
run srun -N1 --container="$IMG" --container-mounts="tmpfs:/scratch:size=8m+mode=1777,umount:/tmp" \
    sh -c 'echo x > /scratch/f && cat /scratch/f; df -k /scratch | awk "NR==2 {print \$2}"; awk "\$5 == \"/tmp\"" /proc/self/mountinfo | wc -l'
with_umount=$(tr '\n' ' ' <<<"$LAST")
run srun -N1 --container="$IMG" sh -c 'awk "\$5 == \"/tmp\"" /proc/self/mountinfo | wc -l'
LAST="with: $with_umount| without: $LAST"
check "--container-mounts=tmpfs:/dst:size=8m+mode=1777,umount:/tmp: a writable 8 MiB tmpfs, and /tmp unmounted" \
    test "$LAST" = "with: x 8192 0 | without: 1"
run srun -N1 --container="$IMG" --container-mounts="umount:/opt" true
check "umount: on a path where nothing is mounted fails in one line" \
    bash -c '[[ $(grep -c "sifrun: error: .*umount:/opt: nothing is mounted there in the container" <<<"$1") -eq 1 ]]' _ "$LAST"

# The host's locale stays out unless named (pyxis): the image may lack it.
LAST=$(as_user env LANG=xx_YY.UTF-8 LC_ALL=xx_YY.UTF-8 timeout 60 srun -N1 --container="$IMG" \
    sh -c 'echo "${LANG-unset} ${LC_ALL-unset}"' 2>&1)
check "the job's LANG and LC_ALL stay out of the container" test "$LAST" = "unset unset"
LAST=$(as_user env LANG=xx_YY.UTF-8 timeout 60 srun -N1 --container="$IMG" --container-env=LANG \
    sh -c 'echo "${LANG-unset}"' 2>&1)
check "... unless named with --container-env" test "$LAST" = "xx_YY.UTF-8"

# --container-readonly (pyxis): the explicit opposite, over the environment.
LAST=$(as_user env SIFRUN_CONTAINER_WRITABLE=1 timeout 60 srun -N1 --container="$IMG" --container-readonly \
    sh -c 'touch /probe 2>&1' 2>&1)
check "--container-readonly wins over SIFRUN_CONTAINER_WRITABLE=1 in the environment" \
    grep -q "Read-only file system" <<<"$LAST"
run srun -N1 --container="$IMG" --container-writable --container-readonly sh -c 'echo RAN'
check "--container-writable with --container-readonly is one error line, nothing runs" \
    bash -c '[[ $(grep -c "sifrun: --container-writable and --container-readonly both given" <<<"$1") -eq 1 && "$1" != *RAN* ]]' _ "$LAST"

# --container-unshare (pyxis): the container's own network (loopback only,
# up), IPC and host name namespaces, shared by the step's tasks on a node.
ns_ids='echo "$(readlink /proc/self/ns/net) $(readlink /proc/self/ns/ipc) $(readlink /proc/self/ns/uts)"'
run srun -N1 -n2 --container="$IMG" sh -c "$ns_ids"
shared_ns=$(sort -u <<<"$LAST")
run srun -N1 -n2 --container="$IMG" --container-unshare=net,ipc,uts sh -c "$ns_ids"
own_ns=$(sort -u <<<"$LAST")
LAST="without: $shared_ns | with: $own_ns"
check "--container-unshare=net,ipc,uts: the step's tasks share new network, IPC and host name namespaces" \
    bash -c 'read -r n1 i1 u1 <<<"$1"; read -r n2 i2 u2 <<<"$2"; [[ $(wc -l <<<"$2") -eq 1 && $n2 == net:* && $n1 != "$n2" && $i1 != "$i2" && $u1 != "$u2" ]]' \
    _ "$shared_ns" "$own_ns"
run srun -N1 --container="$IMG" --container-unshare=net sh -c "ip -o link | cut -d' ' -f2,3"
check "... the network namespace has only the loopback interface, up" \
    bash -c '[[ $1 == "lo: <LOOPBACK,UP"* && $(wc -l <<<"$1") -eq 1 ]]' _ "$LAST"
run srun -N1 --container="$IMG" --container-unshare=pid true
check "--container-unshare with a namespace pyxis does not offer is refused before the job starts" \
    grep -q '"pid" is not one of net, ipc, uts' <<<"$LAST"

# --container-remap-root (pyxis): root inside a user namespace of the task,
# the job user on the host, and no privilege gained.
mkdir -p "$WORK/remap" "$WORK/remap-root-owned"; chown "$TEST_USER" "$WORK/remap"; chmod 755 "$WORK/remap-root-owned"
rm -f "$WORK/remap"/*
run srun -N2 -n4 --container="$IMG" --container-remap-root --container-mounts="$WORK/remap:/remap" \
    sh -c 'echo "$(id -u) $(awk "{print \$1, \$2, \$3}" /proc/self/uid_map)"; touch /remap/made-by-$SLURM_PROCID'
LAST+=" | on the host: $(stat -c %u "$WORK/remap"/made-by-* 2>/dev/null | sort -u | tr '\n' ' ')"
check "--container-remap-root: id -u is 0 in every task, mapped from the job user; its files are the user's on the host" \
    test "$LAST" = "$(printf "0 0 $TEST_UID 1\n%.0s" 1 2 3 4) | on the host: $TEST_UID "
run srun -N1 --container="$IMG" --container-remap-root --container-mounts="$WORK/remap-root-owned:/rootowned" \
    sh -c 'touch /rootowned/x 2>&1; grep NoNewPrivs /proc/self/status'
check "... and gives no privilege: a root-owned host directory stays closed, no_new_privs stays set" \
    bash -c '[[ "$1" == *"Permission denied"* && "$1" == *"NoNewPrivs:	1"* && ! -e $2/x ]]' _ "$LAST" "$WORK/remap-root-owned"
run srun -N1 --container="$IMG" --container-remap-root --container-mounts="$WORK/remap:/remap" \
    sh -c 'touch /remap/chowned && chown 12345:12345 /remap/chowned && echo chown-ok'
LAST+=" | owner on the host: $(stat -c %u:%g "$WORK/remap/chowned" 2>&1)"
check "... where chown to another owner succeeds without effect, as package managers need (seccomp)" \
    test "$LAST" = "chown-ok | owner on the host: $TEST_UID:$(id -g "$TEST_USER")"

run srun -N2 -n8 --container="$IMG" sh -c 'echo $SLURMD_NODENAME $(readlink /proc/self/ns/mnt)'
check "8 tasks on 2 nodes: one mount namespace per node" \
    test "$(sort -u <<<"$LAST" | wc -l)" -eq 2

run srun -N1 -n4 --container="$IMG" sh -c 'echo $SLURM_PROCID'
check "every task keeps its own SLURM_PROCID" test "$(sort -u <<<"$LAST" | tr '\n' ' ')" = "0 1 2 3 "

run srun -N1 --container="$IMG" sh -c 'echo $FROM_IMAGE ${PMIX_RANK:-unset}'
check "image env applied; PMIX_* never taken from the image" test "$LAST" = "yes unset"

run srun -N1 --container="$IMG" --container-mounts="$WORK/data:/data:ro" sh -c 'cat /data/hello.txt; touch /data/x 2>&1'
check "--container-mounts binds read-only" \
    bash -c '[[ "$1" == *"host data"* && "$1" == *"Read-only"* ]]' _ "$LAST"

run srun -N1 --container="$IMG" --container-workdir=/opt pwd
check "--container-workdir" test "$LAST" = "/opt"
run srun -N1 --container="$IMG" --container-workdir=../../opt/. pwd
check "a relative --container-workdir is taken from the container's / and never climbs above it (pyxis)" test "$LAST" = "/opt"

run srun -N1 --container="$IMG" sh -c 'echo $HOME; test -d "$HOME" && echo home-mounted'
check "home directory mounted by default" grep -q home-mounted <<<"$LAST"

run srun -N1 --container="$IMG" --no-container-mount-home sh -c 'test -e "$HOME" && echo present || echo absent'
check "--no-container-mount-home leaves home out" test "$LAST" = "absent"

run srun -N1 --sif-image="$IMG" cat /etc/os-release
check "plugin-owned --sif-image works too" grep -q "sifrun busybox demo" <<<"$LAST"
run srun -N1 --container="$WORK/no-such-image.sif" --sif-image="$IMG" cat /etc/os-release
check "given both, --sif-image wins over --container" grep -q "sifrun busybox demo" <<<"$LAST"

run srun -N1 sh -c 'test -e /opt/only-in-image.sh && echo inside || echo host'
check "without --container the plugin does nothing" test "$LAST" = "host"

run srun -N1 --container="$IMG" sh -c 'exit 7'
rc=$?
check "exit status of the command is the step's" test "$rc" -eq 7

# pytorch_env (admin setting): PyTorch's variables from Slurm's.
cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.plain"
undo "mv -f '$WORK/sifrun.toml.plain' '$WORK/sifrun.toml'"
echo 'pytorch_env = true' >>"$WORK/sifrun.toml"
run srun -N2 -n4 --ntasks-per-node=2 --container="$IMG" \
    sh -c 'echo "$RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $MASTER_ADDR $((MASTER_PORT >= 49152))"'
mv -f "$WORK/sifrun.toml.plain" "$WORK/sifrun.toml"
check "pytorch_env: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT from Slurm's in every task" \
    test "$(sort <<<"$LAST" | tr '\n' ' ')" = "0 0 4 2 node1 1 1 1 4 2 node1 1 2 0 4 2 node1 1 3 1 4 2 node1 1 "
run srun -N1 --container="$IMG" sh -c 'echo "${RANK-unset}"'
check "... and none without it" test "$LAST" = "unset"

check "the idle cache unmounts every image: no loop device or mount left" settled
