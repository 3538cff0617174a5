# shellcheck shell=bash
# Cluster tests, area "hostile" (run: tests/cluster/run hostile).
# The attacks of a hostile cluster user on the plugin (issues 13 and 23),
# each as the unprivileged test user on the real cluster.
# Every check here failed before its fix.

race_images

# Runs "$@" inside node1's mount namespace (its private /run/sifrun).
on_node1() { nsenter -t "$(slurmd_pid_of node1)" -m "$@"; }
# One "sifrun: error:" line and no trace of the command having run.
refused_before_running() {
    [[ $(grep -c "sifrun: error:" <<<"$LAST") -eq 1 ]] && ! grep -q "RAN" <<<"$LAST"
}
# ... and the error line says NEEDLE; with SECS, it came within 20 s (no
# timeout ran out).
refused_saying() {
    refused_before_running && grep "sifrun: error:" <<<"$LAST" | grep -qF -- "$1" && (( ${2:-0} < 20 ))
}

# --- 1. the job picks which partition's list applies -------------------------
secure -J 'x Partition=debug' --container="$IMG" sh -c 'echo RAN'
check "attack: a job named 'x Partition=debug' on partition secure is judged by secure's list" \
    refused unsigned

cat > "$JOBDIR/rename.sh" <<JOB
#!/bin/sh
scontrol update JobId=\$SLURM_JOB_ID JobName="x Partition=debug"
srun --container=$IMG sh -c 'echo RAN'
JOB
chmod 755 "$JOBDIR/rename.sh"; rm -f "$JOBDIR/rename.out"
(cd "$JOBDIR" && runuser -u "$TEST_USER" -- timeout 120 sbatch -Q -N1 -w node1 -p secure -W -o "$JOBDIR/rename.out" "$JOBDIR/rename.sh")
LAST=$(cat "$JOBDIR/rename.out" 2>&1)
check "attack: renaming the running job to 'x Partition=debug' does not change the list" \
    refused unsigned

# The node's partition record of a job goes with the job (its epilog), so a
# job ID slurmctld hands out again never inherits it.
records_of() { on_node1 sh -c "ls /run/sifrun/jobs 2>/dev/null" | grep -c "^$1\." || true; }
as_user timeout 60 srun -N1 -w node1 -p secure --container="$WORK/images/signed-a.sif" sleep 3 >/dev/null 2>&1 &
record_step=$!
record_job="" during=0
for _ in $(seq 100); do
    record_job=$(squeue -h -u "$TEST_USER" -p secure -o %i | head -1)
    [[ -n $record_job ]] && during=$(records_of "$record_job") && [[ $during -eq 1 ]] && break
    sleep 0.1
done
wait "$record_step"
deadline=$((SECONDS + 15))
until [[ $(records_of "$record_job") -eq 0 ]] || (( SECONDS >= deadline )); do sleep 0.2; done
LAST="job '$record_job': records on node1 while it ran: $during, after it ended: $(records_of "$record_job")"
check "a job's partition record is kept while it runs and removed from the node when it ends" \
    bash -c '[[ $1 =~ ^[0-9]+$ && $2 -eq 1 && $3 -eq 0 ]]' _ "$record_job" "$during" "$(records_of "$record_job")"

# --- 2. verify-then-mount race: the partition descriptor flips ---------------
# A user-owned copy of the signed good image with an unsigned SquashFS (the
# evil /marker) appended; the user flips the partition descriptor's offset
# and size between the signed partition and the appended one while jobs
# start. Whatever the helper read first, only verified bytes may run.
DESC=$WORK/desc-race; mkdir -p "$DESC"
cp "$RACE/good.sif" "$DESC/image.sif"
read -r evil_off evil_size < <(partition_of "$RACE/evil.sif")
appended_at=$(stat -c %s "$DESC/image.sif")
dd if="$RACE/evil.sif" bs=64K iflag=skip_bytes,count_bytes skip="$evil_off" count="$evil_size" status=none >> "$DESC/image.sif"
# The 16 bytes (offset, size) of the primary partition's descriptor, and
# their good and evil values.
desc_field=$(python3 - "$DESC/image.sif" "$appended_at" "$evil_size" "$DESC" <<'PY'
import struct, sys
path, evil_off, evil_size, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
d = open(path, "rb").read()
total, doff = struct.unpack_from("<qq", d, 88)
for i in range(total):
    o = doff + i * 585
    dtype, used = struct.unpack_from("<iB", d, o)
    if used and dtype == 0x4004 and struct.unpack_from("<ii", d, o + 201)[1] == 2:
        open(out + "/good.16", "wb").write(d[o + 17:o + 33])
        open(out + "/evil.16", "wb").write(struct.pack("<qq", evil_off, evil_size))
        print(o + 17)
PY
)
chown -R "$TEST_USER" "$DESC"
export DESC desc_field
flip_desc() { dd if="$DESC/$1.16" of="$DESC/image.sif" bs=16 oflag=seek_bytes seek="$desc_field" conv=notrunc status=none; }
export -f flip_desc
as_user bash -c 'while :; do flip_desc evil; sleep 0.01; flip_desc good; sleep 0.01; done' &
desc_writer=$!; disown "$desc_writer"
race_against "$desc_writer" "flip_desc evil" --container="$DESC/image.sif" md5sum /marker
check "attack: flipping the partition descriptor during setup never mounts unsigned bytes" never_evil
echo "     ($LAST)"

# --- 3. root creates files and directories on the host -----------------------
rm -rf /etc/sifrun-attack-dir /etc/sifrun-attack-file
run srun -N1 -w node1 --container="$IMG" \
    --container-mounts="/etc:/y,$WORK/data:/y/sifrun-attack-dir,$WORK/data/hello.txt:/y/sifrun-attack-file" sh -c 'echo RAN'
LAST+=$'\n'"on the host: $(ls -d /etc/sifrun-attack-dir /etc/sifrun-attack-file 2>&1 | tr '\n' ' ')"
check "attack: a bind inside a host bind never makes root create a file or directory on the host" \
    bash -c '[[ "$1" == *"never creates files in host directories"* && ! -e /etc/sifrun-attack-dir && ! -e /etc/sifrun-attack-file ]] && ! grep -q "^RAN" <<<"$1"' _ "$LAST"
rm -rf /etc/sifrun-attack-dir /etc/sifrun-attack-file
run srun -N1 --container="$IMG" --container-mounts="$WORK:/w,$WORK/data:/w/images" ls /w/images
check "a bind onto a directory that exists inside another bind still works" grep -q "hello.txt" <<<"$LAST"

# --- 4. the dirpath rule faked through the user's own mount namespace --------
secure --container="$WORK/ecl-images/trusted-b/signed-b.sif" cat /etc/os-release
check "ECL dirpath: an image signed by B runs from the directory trusted for B" \
    grep -q "sifrun busybox demo" <<<"$LAST"
FAKE=$WORK/fake-b; mkdir -p "$FAKE"; cp "$WORK/images/signed-b.sif" "$FAKE/signed-b.sif"; chown -R "$TEST_USER" "$FAKE"
as_user unshare --user --map-root-user --mount sh -c "mount --bind '$FAKE' '$WORK/ecl-images/trusted-b' && exec sleep 61" &
fake_ns=""
for _ in $(seq 50); do fake_ns=$(pgrep -u "$TEST_USER" -f "sleep 61" | head -1); [[ -n $fake_ns ]] && break; sleep 0.1; done
secure --container="/proc/$fake_ns/root$WORK/ecl-images/trusted-b/signed-b.sif" sh -c 'echo RAN'
check "attack: an image reached through /proc/PID/root of the user's own namespace is refused" \
    refused_before_running
ln -sfn "/proc/$fake_ns/root$WORK/ecl-images/trusted-b" "$FAKE/link"
secure --container="$FAKE/link/signed-b.sif" sh -c 'echo RAN'
check "attack: ... also through a symlink to that /proc path" refused_before_running
pkill -u "$TEST_USER" -f "sleep 61" 2>/dev/null

# --- 4b. image symlinks against what root does to a writable root ------------
# An image whose entries point at host paths: /to-host -> a root-owned host
# directory, /to-root -> /. A writable root gives the image's directories to
# the user (never what a symlink points at), and umount: resolves inside
# the root (a symlink to / is the root, which is refused).
HOSTDIR=$WORK/root-owned-target; mkdir -p "$HOSTDIR"; chown root:root "$HOSTDIR"; chmod 755 "$HOSTDIR"
mkdir -p "$WORK/rootfs-links"; cp -a "$WORK/rootfs/." "$WORK/rootfs-links/"
ln -sfn "$HOSTDIR" "$WORK/rootfs-links/to-host"; ln -sfn / "$WORK/rootfs-links/to-root"
"$SIFRUN" build --force "$WORK/rootfs-links" -o "$WORK/images/links.sif" >/dev/null 2>&1; chmod 644 "$WORK/images/links.sif"
run srun -N1 --container="$WORK/images/links.sif" --container-writable sh -c 'stat -c %u /'
LAST+=" | host dir owner: $(stat -c %u:%g "$HOSTDIR")"
check "attack: an image symlink to a host directory is not given to the user by a writable root" \
    test "$LAST" = "$TEST_UID | host dir owner: 0:0"
run srun -N1 --container="$WORK/images/links.sif" --container-mounts=umount:/to-root true
check "attack: umount: through an image symlink to / is refused in one line" \
    bash -c '[[ $(grep -c "sifrun: error: .*umount:/to-root: that is the container.s root, which cannot be unmounted" <<<"$1") -eq 1 ]]' _ "$LAST"

# --- 5. denial of service on the node ------------------------------------------
# A signed image truncated to 1.5 GB (holes): only the SIF's own bytes are
# copied into the node's RAM for verification.
settled
cp "$WORK/images/signed-a.sif" "$WORK/images/sparse.sif"
truncate -s 1536M "$WORK/images/sparse.sif"; chown "$TEST_USER" "$WORK/images/sparse.sif"
as_user timeout 60 srun -N1 -w node1 -p secure --container="$WORK/images/sparse.sif" sleep 4 >"$WORK/sparse.out" 2>&1 &
sparse_step=$!
copy_kib=""
for _ in $(seq 100); do
    copy_kib=$(on_node1 sh -c 'du -kL /run/sifrun/images/*/image.sif 2>/dev/null' | awk '{s += $1} END {print s + 0}')
    [[ $copy_kib -gt 0 ]] && break
    sleep 0.1
done
wait "$sparse_step"; sparse_rc=$?
LAST="step exit $sparse_rc, copy on node1: ${copy_kib} KiB; $(cat "$WORK/sparse.out")"
check "attack: a signed image truncated to 1.5 GB costs the node only its real bytes" \
    bash -c '[[ $1 -eq 0 && $2 -gt 0 && $2 -lt 65536 ]]' _ "$sparse_rc" "$copy_kib"

mkdir -p "$WORK/rootfs-big"; cp -a "$WORK/rootfs/." "$WORK/rootfs-big/"
head -c 80M /dev/urandom > "$WORK/rootfs-big/blob"
"$SIFRUN" build --force "$WORK/rootfs-big" -o "$WORK/images/big.sif" >/dev/null 2>&1
"$SIFRUN" sign --key "$WORK/a-private.asc" "$WORK/images/big.sif" >/dev/null 2>&1
chown "$TEST_USER" "$WORK/images/big.sif"; rm -rf "$WORK/rootfs-big"
secure --container="$WORK/images/big.sif" sh -c 'echo RAN'
check "an image larger than copy_limit_mib is refused before anything is copied" \
    refused_saying "copy_limit_mib"

mkdir -p "$WORK/rootfs-fifo"; cp -a "$WORK/rootfs/." "$WORK/rootfs-fifo/"
rm -f "$WORK/rootfs-fifo/etc/passwd"; mkfifo "$WORK/rootfs-fifo/etc/passwd"
"$SIFRUN" build --force "$WORK/rootfs-fifo" -o "$WORK/images/fifo-passwd.sif" >/dev/null 2>&1
chmod 644 "$WORK/images/fifo-passwd.sif"; rm -rf "$WORK/rootfs-fifo"
started=$SECONDS
run srun -N1 --container="$WORK/images/fifo-passwd.sif" sh -c 'echo RAN'
LAST+=" (after $((SECONDS - started)) s)"
check "attack: an image whose /etc/passwd is a FIFO is refused at once, not waited on" \
    refused_saying "/etc/passwd is not a regular file" "$((SECONDS - started))"
mkfifo "$WORK/images/fifo.sif"; chmod 644 "$WORK/images/fifo.sif"
started=$SECONDS
run srun -N1 --container="$WORK/images/fifo.sif" sh -c 'echo RAN'
check "attack: a FIFO named as the image is refused at once" \
    refused_saying "fifo.sif: not a regular file" "$((SECONDS - started))"

# --- 8. the smaller holes -------------------------------------------------------
# Root's slurmd has the host's root; its /proc entry is visible in the
# container (same PID namespace).
host_root=/proc/$(slurmd_pid_of node1)/root
run srun -N1 -w node1 --container="$IMG" --container-workdir="$host_root/etc" true
probe_existing=$LAST
run srun -N1 -w node1 --container="$IMG" --container-workdir="$host_root/no-such-dir" true
LAST="existing: $probe_existing / missing: $LAST"
check "attack: --container-workdir through /proc/PID/root says nothing about the host's files" \
    bash -c '[[ "$1" == *"root/etc: no such directory"* && "$2" == *"no-such-dir: no such directory"* ]]' _ "$probe_existing" "$LAST"

run srun -N1 --container="$IMG" --container-mounts=/proc/self/cwd:/x ls /x
check "attack: /proc/self/cwd as a bind source (the root helper's own) is refused" \
    grep -q "sifrun: error: .*/proc/self/cwd.*refused" <<<"$LAST"

run srun -N1 -w node1 --container="$IMG" true
keeper=$(pgrep -f "sifrun cache keeper" | head -1)
LAST="keeper $keeper: $(grep -E '^(Gid|Groups):' "/proc/$keeper/status" 2>&1 | tr '\t\n' '  '); entries: $(on_node1 sh -c "stat -c '%U:%G' /run/sifrun/images/ /run/sifrun/images/*" 2>&1 | sort -u | tr '\n' ' ')"
check "the root helper and the cache keeper drop the job user's groups (files stay root:root)" \
    bash -c '[[ -n $2 && "$1" == *"Gid: 0 0 0 0 "* && "$1" =~ Groups:[[:space:]]*\; && "$1" == *"entries: root:root "* && "$1" != *"sifrun-test"* ]]' _ "$LAST" "$keeper"

# --- one user cannot fill the node cache (issue 23) ------------------------------
# The test cluster allows 3 images per user (cache_max_images_per_user): with
# 3 steps running on 3 images, a 4th image is refused at once; once they
# end, a new image takes an idle one's place.
for i in 1 2 3 4 5; do cp "$IMG" "$WORK/images/many-$i.sif"; chmod 644 "$WORK/images/many-$i.sif"; done
settled
cap_pids=()
for i in 1 2 3; do
    as_user timeout 60 srun -Q -N1 -w node1 --container="$WORK/images/many-$i.sif" sleep 6 >"$WORK/cap.$i" 2>&1 &
    cap_pids+=($!)
done
for _ in $(seq 100); do [[ $(node_mounts node1) -ge 3 ]] && break; sleep 0.1; done
run srun -N1 -w node1 --container="$WORK/images/many-4.sif" sh -c 'echo RAN'
cap_refusal=$LAST
cap_ok=0
for p in "${cap_pids[@]}"; do wait "$p" && cap_ok=$((cap_ok + 1)); done
run srun -N1 -w node1 --container="$WORK/images/many-5.sif" cat /etc/os-release
LAST="3 running: $cap_ok ok; 4th: $cap_refusal; afterwards: $LAST; mounted on node1 now: $(node_mounts node1)"
check "a user's 4th image is refused while 3 are in use (cache_max_images_per_user), an idle one makes room later" \
    bash -c '[[ $1 -eq 3 && "$2" == *"cache_max_images_per_user"* && "$2" != *RAN* && "$3" == *"sifrun busybox demo"* && $4 -le 3 ]]' _ "$cap_ok" "$cap_refusal" "$LAST" "$(node_mounts node1)"

# --- 6. fail closed: a step that asked for an image never runs on the host ------
# In both plugstack modes (whether the plugin loads at all is Slurm's
# business), for each kind of setup failure.
PLUG=$(ci/cluster paths | awk '/^sifrun plugstack/ {print $3}')
[[ -f $PLUG ]] || PLUG=/etc/slurm/plugstack.conf.d/sifrun.conf
cp "$WORK/sifrun.toml" "$WORK/sifrun.toml.good"
fail_closed() { # fail_closed RC: the step failed, said why, ran nothing
    [[ $1 -ne 0 ]] && refused_before_running
}
for mode in required optional; do
    sed -i -E "s/^(required|optional) /$mode /" "$PLUG"
    secure --container="$IMG" sh -c 'echo RAN'
    check "fail closed ($mode): ECL refusal" fail_closed $?
    run srun -N1 --container="$WORK/images/missing.sif" sh -c 'echo RAN'
    check "fail closed ($mode): missing image" fail_closed $?
    run srun -N1 --container="$WORK/images/private.sif" sh -c 'echo RAN'
    check "fail closed ($mode): unreadable image" fail_closed $?
    run srun -N1 --container="$IMG" --container-mounts="$WORK/private/secret:/s" sh -c 'echo RAN'
    check "fail closed ($mode): bad bind" fail_closed $?
    sed -i "s|^sifrun = .*|sifrun = \"/nonexistent/sifrun\"|" "$WORK/sifrun.toml"
    run srun -N1 --container="$IMG" sh -c 'echo RAN'
    check "fail closed ($mode): missing helper" fail_closed $?
    mv "$WORK/sifrun.toml" "$WORK/sifrun.toml.away"
    run srun -N1 --container="$IMG" sh -c 'echo RAN'
    check "fail closed ($mode): missing config file" fail_closed $?
    cp "$WORK/sifrun.toml.good" "$WORK/sifrun.toml"; rm -f "$WORK/sifrun.toml.away"
done
sed -i -E "s/^(required|optional) /required /" "$PLUG"
run srun -N1 sh -c 'echo host-ok'
check "... while steps without a container run as before" test "$LAST" = "host-ok"
check "no loop device or mount left after the attacks" settled
