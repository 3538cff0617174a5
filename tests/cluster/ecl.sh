# shellcheck shell=bash
# Cluster tests, area "ecl" (run: tests/cluster/run ecl).
# Execution control lists through real srun: each mode, tampering, the
# node's verification record, a writer racing the jobs, a broken config.

secure --container="$WORK/images/signed-a.sif" cat /etc/os-release
check "ECL whitelist: image signed by a listed key runs" grep -q "sifrun busybox demo" <<<"$LAST"
secure --container="$IMG" true
check "ECL: unsigned image refused (image, partition, rule named)" \
    refused "$IMG" 'execgroup "site" (whitelist)' unsigned
# Images in --container-mounts are judged by the same list.
secure --container="$WORK/images/signed-a.sif" --container-mounts="$IMG:/data" true
check "ECL: an unsigned image in --container-mounts is refused beside a signed main image" \
    refused "$IMG" 'execgroup "site" (whitelist)' unsigned
cp "$WORK/images/signed-a.sif" "$WORK/images/data-signed-a.sif"
secure --container="$WORK/images/signed-a.sif" --container-mounts="$WORK/images/data-signed-a.sif:/data" \
    sh -c 'grep -c "sifrun busybox demo" /data/etc/os-release'
check "ECL: a signed image in --container-mounts is mounted" test "$LAST" = "1"
secure --container="$WORK/images/signed-b.sif" true
check "ECL whitelist: image signed only by an unlisted key refused" refused signed-b.sif "no key the list allows"
secure --container="$WORK/ecl-images/strict/signed-a.sif" true
check "ECL whitestrict: one of two listed signers is not enough" refused 'execgroup "strict" (whitestrict)' "missing $FP_B"
secure --container="$WORK/ecl-images/strict/signed-ab.sif" cat /etc/os-release
check "ECL whitestrict: signed by every listed key runs" grep -q "sifrun busybox demo" <<<"$LAST"
secure --container="$WORK/ecl-images/black/signed-a.sif" cat /etc/os-release
check "ECL blacklist: image without a listed signer runs" grep -q "sifrun busybox demo" <<<"$LAST"
secure --container="$WORK/ecl-images/black/signed-ab.sif" true
check "ECL blacklist: a listed signer refuses the image" refused 'execgroup "no-b" (blacklist)' "$FP_B"
run srun -N1 -p debug --container="$IMG" cat /etc/os-release
check "a partition without an ECL runs unsigned images" grep -q "sifrun busybox demo" <<<"$LAST"
LAST=$(as_user env SLURM_JOB_PARTITION=debug timeout 60 srun -N1 -p secure --export=ALL,SLURM_JOB_PARTITION=debug --container="$IMG" true 2>&1)
check "the partition comes from slurmctld, not the job's environment" refused unsigned

cp "$WORK/images/signed-a.sif" "$WORK/images/tampered.sif"
off=$(( $("$SIFRUN" inspect --json "$IMG" | python3 -c 'import json,sys; d=json.load(sys.stdin); p=[o for o in d["objects"] if o["type"]=="partition"][0]; print(p["offset"] + p["size"] // 2)') ))
printf 'X' | dd of="$WORK/images/tampered.sif" bs=1 seek="$off" conv=notrunc status=none
secure --container="$WORK/images/tampered.sif" true
check "ECL: a signed image with one byte changed is refused as tampered" refused tampered.sif tampered

: > "$WORK/slurmd-mark"
secure --container="$WORK/images/signed-a.sif" true
secure --container="$WORK/images/signed-a.sif" true
LAST=$(grep -h "ECL verdict for $WORK/images/signed-a.sif" "$(ci/cluster paths | awk '/^logs/ {print $2}' | sed 's/{.*//')"slurmd-node1.log | tail -1)
check "a later job with the same image uses the node's verification record (no re-hashing)" \
    grep -q '"cached":true' <<<"$LAST"

# The bytes verified are the bytes mounted: the user owns this image and,
# while jobs start, keeps flipping its SquashFS partition in place between
# the signed bytes and evil ones (same layout, a 128 KiB random /marker that
# differs). Verifying the live file and mounting it would let the evil
# bytes run (the check that mutation fails); no job may ever see them.
race_images
flip() { dd if="$RACE/$1.sif" of="$RACE/image.sif" bs=64K iflag=skip_bytes,count_bytes oflag=seek_bytes skip="$part_off" seek="$part_off" count="$part_size" conv=notrunc status=none; }
export -f flip; export RACE part_off part_size
# Every fifth round the good bytes stay for 0.5 s: on a loaded machine a
# copy can take longer than 20 ms, and without a pause every run would be
# refused and the check would prove nothing.
as_user bash -c 'i=0; while :; do flip evil; sleep 0.02; flip good; sleep 0.02; i=$((i + 1)); [ $((i % 5)) -ne 0 ] || sleep 0.5; done' &
writer=$!; disown "$writer"
race_against "$writer" "flip evil" --container="$RACE/image.sif" sh -c 'sleep 0.3; md5sum /marker'
check "a writer racing the jobs never gets unverified bytes to run" never_evil
echo "     ($LAST)"; [[ -n ${SIFRUN_DEBUG_RACE:-} ]] && echo "$RACE_OUT"

cp "$WORK/ecl/site.toml" "$WORK/ecl/site.toml.good"
echo 'activated = "maybe"' >> "$WORK/ecl/site.toml"
run srun -N1 -p debug --container="$IMG" true
check "an invalid ECL configuration refuses every container run, with the file named" \
    grep -q "sifrun: error: .*ECL configuration $WORK/ecl/site.toml" <<<"$LAST"
run srun -N1 -p debug sh -c 'echo host-ok'
check "... while steps without a container still run" test "$LAST" = "host-ok"
cp "$WORK/ecl/site.toml.good" "$WORK/ecl/site.toml"

"$SIFRUN" ecl check --config "$WORK/ecl/site.toml" --partition secure "$WORK/images/signed-a.sif" >/dev/null; a=$?
"$SIFRUN" ecl check --config "$WORK/ecl/site.toml" --partition secure "$IMG" >/dev/null; r=$?
"$SIFRUN" ecl check --config "$WORK/ecl/site.toml.missing" --partition secure "$IMG" >/dev/null 2>&1; e=$?
LAST="exit statuses: allowed $a, refused $r, bad config $e"
check "sifrun ecl check: 0 allowed, 1 refused, 2 unreadable configuration" test "$a $r $e" = "0 1 2"
check "no loop device or mount left after the ECL runs" settled
