# shellcheck shell=bash
# Cluster tests, area "encryption" (run: tests/cluster/run encryption).
# Encrypted images (--container-key-file).

# One image encrypted to an RSA key, one with a passphrase. Each step unlocks
# its own copy: a forked crypt-serve process decrypts on read behind a FUSE
# file, a private loop device over it; nothing is shared through the cache.
ENC=$WORK/enc; mkdir -p "$ENC"; chmod 755 "$ENC"
openssl genrsa -out "$ENC/priv.pem" 2048 2>/dev/null
openssl rsa -in "$ENC/priv.pem" -pubout -out "$ENC/pub.pem" 2>/dev/null
openssl genrsa -out "$ENC/other.pem" 2048 2>/dev/null
echo "cluster secret" > "$ENC/pass.txt"; echo "not the secret" > "$ENC/wrong.txt"
"$SIFRUN" build --force --encrypt --pem-path "$ENC/pub.pem" "$WORK/rootfs" -o "$ENC/enc-pem.sif" >/dev/null 2>&1
"$SIFRUN" build --force --passphrase-file "$ENC/pass.txt" "$WORK/rootfs" -o "$ENC/enc-pass.sif" >/dev/null 2>&1
chmod 644 "$ENC"/*.sif
chown "$TEST_USER" "$ENC/priv.pem" "$ENC/other.pem" "$ENC/pass.txt" "$ENC/wrong.txt"
chmod 600 "$ENC/priv.pem" "$ENC/other.pem" "$ENC/pass.txt" "$ENC/wrong.txt"
cp "$ENC/priv.pem" "$ENC/root-only.pem"; chmod 600 "$ENC/root-only.pem"
# FUSE mounts (host and nodes), loop devices over a decrypting file, servers.
crypt_leaks() {
    local out
    out="$(losetup -a 2>/dev/null | grep -c '(/image)' || true)"
    out+=" $(pgrep -c -x crypt-serve || true)"
    for pid in self $(pgrep -f 'slurmd -D -N node' || true); do
        out+=" $(grep -c 'fuse.sifrun-luks' "/proc/$pid/mountinfo" 2>/dev/null)"
    done
    echo "$out"
}
crypt_settled() {
    local deadline=$((SECONDS + 15)) l
    until l=$(crypt_leaks); LAST="loop devices, crypt-serve processes, FUSE mounts (host, nodes): $l"; [[ $(tr -d ' 0' <<<"$l") == "" ]]; do
        (( SECONDS < deadline )) || return 1; sleep 0.25
    done
}

run srun -N2 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/priv.pem" cat /etc/os-release
check "encrypted image (PEM key) runs on 2 nodes with --container-key-file" \
    test "$(grep -c 'sifrun busybox demo' <<<"$LAST")" -eq 2
run bash -c "cd '$ENC' && SIFRUN_CONTAINER_KEY_FILE=pass.txt srun -N2 --container=enc-pass.sif cat /etc/os-release"
check "encrypted image (passphrase) with SIFRUN_CONTAINER_KEY_FILE, relative paths" \
    test "$(grep -c 'sifrun busybox demo' <<<"$LAST")" -eq 2
run srun -N1 --container="$ENC/enc-pass.sif" --container-key-file="$ENC/pass.txt" sh -c 'grep " / " /proc/self/mountinfo; id -u'
check "encrypted image: read-only root, task runs as the job user" \
    bash -c '[[ "$1" == *" / / ro,"* && "$1" == *"$2"* ]]' _ "$LAST" "$TEST_UID"
check "after encrypted steps: no FUSE mount, loop device or crypt-serve process left" crypt_settled

# While a step runs: one server on its node, its FUSE mount in no mount table.
as_user timeout 60 srun -N1 -w node1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/priv.pem" sleep 4 >/dev/null 2>&1 &
bg=$!
deadline=$((SECONDS + 20))
until pgrep -x crypt-serve >/dev/null || (( SECONDS >= deadline )); do sleep 0.2; done
l=$(crypt_leaks)
LAST="during the step: $l"
check "during an encrypted step: a crypt-serve process, the FUSE mount detached" \
    bash -c 'set -- $1; [[ $1 -eq 1 && $2 -eq 1 && $3 -eq 0 && $4 -eq 0 && $5 -eq 0 ]]' _ "$l"
serve_status=$(grep -E '^(Uid|Gid|Groups|CapEff|CapPrm|NoNewPrivs):' "/proc/$(pgrep -x crypt-serve | head -1)/status" 2>&1 | tr '\t\n' '  ')
LAST="crypt-serve: $serve_status"
check "the decrypting server runs as nobody, with no groups and no capabilities (issue 23)" \
    bash -c '[[ "$1" == *"Uid: 65534 65534 65534 65534 "* && "$1" == *"Gid: 65534 65534 65534 65534 "* && "$1" =~ Groups:[[:space:]]*CapPrm && "$1" == *"CapEff: 0000000000000000"* && "$1" == *"NoNewPrivs: 1"* ]]' _ "$serve_status"
wait "$bg"
check "the crypt-serve process exits by itself when the step ends" crypt_settled

# Attack (issue 23): a task escapes the step (its own session, its parent
# gone: proctrack/linuxproc loses track of it). At the step's end the plugin
# ends everything left in the container, so neither the escaped process nor
# the decrypting server and its loop device outlive the step.
run srun -N1 -w node1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/priv.pem" \
    sh -c "$ESCAPING_TASK" _ 301
check "attack: a task escaped the encrypted step (setsid, parent gone)" grep -qx escaped <<<"$LAST"
check "the escaped task is ended with the step" gone_within 10 -u "$TEST_USER" -f '^sleep 301'
check "and keeps no decrypting server, loop device or FUSE mount alive" crypt_settled
pkill -9 -u "$TEST_USER" -f '^sleep 301' || true

# The server's life is tied to slurmstepd's: killed with SIGKILL (no step
# end, no sweep), it still takes the server, and so the key, with it.
as_user timeout 60 srun -N1 -w node1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/priv.pem" sleep 302 >/dev/null 2>&1 &
stepd=""
for _ in $(seq 100); do
    stepd=$(pgrep -f 'slurmstepd: \[[0-9]+\.0\]' | head -1 || true)
    [[ -n $stepd ]] && pgrep -x crypt-serve >/dev/null && pgrep -u "$TEST_USER" -f '^(/bin/)?sleep 302' >/dev/null && break
    sleep 0.2
done
LAST="slurmstepd $stepd, crypt-serve $(pgrep -x crypt-serve | tr '\n' ' ')"
kill -9 "$stepd" 2>/dev/null
check "SIGKILL of slurmstepd during an encrypted step: the decrypting server ends with it" gone_within 5 -x crypt-serve
pkill -9 -u "$TEST_USER" -f '^(/bin/)?sleep 302' || true
scancel -u "$TEST_USER" 2>/dev/null || true
for _ in $(seq 50); do squeue -h | grep -q . || break; sleep 0.2; done
check "and once the orphaned task is gone, nothing is left" crypt_settled

run srun -N1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/other.pem" true
rc=$?
check "wrong PEM key: the step fails with one clear line" \
    bash -c '[[ $1 -ne 0 && "$2" == *"wrong private key"* && $(grep -c "wrong private key" <<<"$2") -eq 1 ]]' _ "$rc" "$LAST"
run srun -N1 --container="$ENC/enc-pass.sif" --container-key-file="$ENC/wrong.txt" true
rc=$?
check "wrong passphrase: the step fails with one clear line" \
    bash -c '[[ $1 -ne 0 && "$2" == *"wrong key or passphrase"* ]]' _ "$rc" "$LAST"
run srun -N1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/pass.txt" true
check "a passphrase file for a PEM image is named as the wrong kind of key" \
    grep -q "encrypted to an RSA key: give its PEM private key" <<<"$LAST"
run srun -N1 --container="$ENC/enc-pem.sif" true
rc=$?
check "no key: the step fails and names --container-key-file" \
    bash -c '[[ $1 -ne 0 && "$2" == *"the image is encrypted: give its key with --container-key-file"* ]]' _ "$rc" "$LAST"
run srun -N1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/root-only.pem" true
rc=$?
check "a key file the job user cannot read is refused (opened as the user)" \
    bash -c '[[ $1 -ne 0 && "$2" == *"root-only.pem: permission denied (not readable by the job user)"* ]]' _ "$rc" "$LAST"
mkfifo "$ENC/fifo.key"; chown "$TEST_USER" "$ENC/fifo.key"
started=$SECONDS
run srun -N1 --container="$ENC/enc-pem.sif" --container-key-file="$ENC/fifo.key" true
rc=$?
check "attack: a FIFO as key file is refused at once, not waited on" \
    bash -c '[[ $1 -ne 0 && "$2" == *"fifo.key: not a regular file"* && $3 -lt 20 ]]' _ "$rc" "$LAST" "$((SECONDS - started))"
run srun -N1 --container="$IMG" --container-key-file="$ENC/priv.pem" cat /etc/os-release
check "a key file given for a plain image is ignored" grep -q "sifrun busybox demo" <<<"$LAST"
check "after the failed encrypted steps: no FUSE mount, loop device or crypt-serve process left" crypt_settled
check "and no loop device or squashfs mount left at all" settled
