# shellcheck shell=bash
# Shared by every area of the cluster tests (sourced by tests/cluster/run):
# the check counters and name filter, the images, keys and ECL every area
# may use, the local cluster (ci/cluster) with the plugin, and the helpers
# that run jobs as the unprivileged test user and look for leftovers.
#
# An area file may rely on everything defined here and on nothing another
# area defined: each runs alone on a fresh cluster.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO" || exit 1
# SIFRUN_INSTALLED=1: the installed package's files (ci/package, dpkg -i);
# otherwise the release build, copied by start_cluster to where every node
# sees it (a checkout under /tmp is private to this machine's namespace).
if [[ ${SIFRUN_INSTALLED:-0} == 1 ]]; then
    SIFRUN=/usr/bin/sifrun
    SPANK_SO=/usr/lib/sifrun/libsifrun_spank.so
    CLI_FILTER_SO=/usr/lib/sifrun/cli_filter_sifrun.so
else
    # SIFRUN_BIN / SIFRUN_PLUGIN / SIFRUN_CLI_FILTER: other builds (ci/slurm-versions).
    SIFRUN=${SIFRUN_BIN:-$REPO/target/release/sifrun}
    SPANK_SO=${SIFRUN_PLUGIN:-$REPO/target/release/libsifrun_spank.so}
    CLI_FILTER_SO=${SIFRUN_CLI_FILTER:-$REPO/target/release/libcli_filter_sifrun.so}
fi
TEST_USER=${SIFRUN_TEST_USER:-sifrun-test}

# --- results -------------------------------------------------------------------
passed=0 failed=0 unselected=0
# Check-name filters (tests/cluster/run PATTERN): empty selects every check.
PATTERNS=()
selected() {
    local p
    (( ${#PATTERNS[@]} == 0 )) && return 0
    for p in "${PATTERNS[@]}"; do [[ ${1,,} == *"${p,,}"* ]] && return 0; done
    return 1
}
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$1"; [[ -n ${2:-} ]] && printf '     %s\n' "$2"; }
# skip NAME REASON: a check this Slurm cannot run (counted apart, named).
skipped=0
skip() {
    selected "$1" || { unselected=$((unselected + 1)); return 0; }
    skipped=$((skipped + 1)); printf 'skip %s (%s)\n' "$1" "$2"
}
# check NAME COMMAND...: pass when COMMAND succeeds. A check the filter
# leaves out is not run (the steps before it still are: they set it up).
check() {
    local name=$1; shift
    if ! selected "$name"; then unselected=$((unselected + 1)); return 0; fi
    if "$@"; then pass "$name"; else fail "$name" "${LAST:-}"; fi
}

# --- undoing what the tests change on the host --------------------------------
# undo COMMAND: run COMMAND (a string) when the tests end, however they end,
# in reverse order of registration; the cluster stops last.
UNDO=()
undo() { UNDO+=("$1"); }
run_undo() {
    local i
    for ((i = ${#UNDO[@]} - 1; i >= 0; i--)); do eval "${UNDO[i]}" >/dev/null 2>&1 || true; done
    UNDO=()
}

# --- the fixtures ----------------------------------------------------------------
# Images and the plugin config live outside /tmp: every node has its own /tmp.
WORK=/var/tmp/sifrun-cluster-tests
IMG=$WORK/images/busybox.sif
JOBDIR=$WORK/jobs
# Short idle time so the tests can watch the node cache unmount images.
CACHE_IDLE=3

# After start_cluster: the test user exists then.
make_fixtures() {
    mkdir -p "$WORK/images" "$WORK/data" "$JOBDIR"
    chmod 755 "$WORK/images"
    chown "$TEST_USER" "$JOBDIR"
    ci/make-busybox-rootfs "$WORK/rootfs" >/dev/null
    "$SIFRUN" build --force "$WORK/rootfs" -o "$IMG" --env FROM_IMAGE=yes --env PMIX_RANK=999 --env CUDA_VISIBLE_DEVICES=7 >/dev/null
    chmod 644 "$IMG"
    cp "$IMG" "$WORK/images/private.sif"; chmod 600 "$WORK/images/private.sif"
    echo "not a sif image" > "$WORK/images/text.sif"; chmod 644 "$WORK/images/text.sif"
    echo "host data" > "$WORK/data/hello.txt"; chmod -R a+rX "$WORK/data"
    mkdir -p "$WORK/private"; echo secret > "$WORK/private/secret"; chmod 700 "$WORK/private"; chmod 644 "$WORK/private/secret"
    make_keys_and_ecl
}

# Two real OpenPGP keys (gpg), images signed with `sifrun sign`, and an ECL
# with one execgroup per mode: whitestrict [A,B] and blacklist [B] for two
# directories, whitelist [A] for images anywhere else.
make_keys_and_ecl() {
    export GNUPGHOME=$WORK/gnupg; mkdir -m 700 "$GNUPGHOME"
    local k
    for k in a b; do
        gpg --batch --quiet --passphrase '' --quick-gen-key "sifrun test $k <$k@sifrun.test>" ed25519 sign never 2>/dev/null
        gpg --batch --armor --export-secret-keys "$k@sifrun.test" > "$WORK/$k-private.asc"
    done
    FP_A=$(fp a); FP_B=$(fp b)
    mkdir -p "$WORK/ecl" "$WORK/ecl-images/strict" "$WORK/ecl-images/black" "$WORK/ecl-images/trusted-b"
    gpg --batch --armor --export a@sifrun.test b@sifrun.test > "$WORK/ecl/keyring.asc" 2>/dev/null
    # Key generation started a gpg-agent for this GNUPGHOME; nothing needs it
    # from here on, and it must not outlive the tests.
    gpgconf --kill gpg-agent 2>/dev/null || true
    signed "$WORK/images/signed-a.sif" a
    signed "$WORK/images/signed-b.sif" b
    signed "$WORK/ecl-images/strict/signed-a.sif" a
    signed "$WORK/ecl-images/strict/signed-ab.sif" a b
    signed "$WORK/ecl-images/black/signed-a.sif" a
    signed "$WORK/ecl-images/black/signed-ab.sif" a b
    signed "$WORK/ecl-images/trusted-b/signed-b.sif" b
    cat > "$WORK/ecl/site.toml" <<TOML
keyrings = ["$WORK/ecl/keyring.asc"]

[partitions.secure]
activated = true

[[partitions.secure.execgroup]]
tagname = "strict"
mode = "whitestrict"
dirpath = "$WORK/ecl-images/strict"
keyfp = ["$FP_A", "$FP_B"]

[[partitions.secure.execgroup]]
tagname = "no-b"
mode = "blacklist"
dirpath = "$WORK/ecl-images/black"
keyfp = ["$FP_B"]

# Images signed by B run only from this directory (the dirpath attack
# tries to fake it).
[[partitions.secure.execgroup]]
tagname = "trusted-b"
mode = "whitelist"
dirpath = "$WORK/ecl-images/trusted-b"
keyfp = ["$FP_B"]

[[partitions.secure.execgroup]]
tagname = "site"
mode = "whitelist"
dirpath = ""
keyfp = ["$FP_A"]
TOML
    chmod 644 "$WORK/ecl/site.toml" "$WORK/ecl/keyring.asc"
}
fp() { gpg --with-colons --list-keys "$1@sifrun.test" 2>/dev/null | awk -F: '/^fpr/ {print $10; exit}'; }
signed() { # signed OUT KEY... : a copy of IMG signed by each KEY
    local out=$1 k; shift
    cp "$IMG" "$out"
    for k in "$@"; do "$SIFRUN" sign --key "$WORK/$k-private.asc" "$out" >/dev/null 2>&1 || echo "signing $out failed" >&2; done
    chmod 644 "$out"
}

# Two images of the same layout that differ only in a 128 KiB random
# /marker, "good" signed by key A and "evil" unsigned, for the attacks that
# swap bytes under a running setup. Sets RACE, GOOD_MD5, EVIL_MD5 and the
# primary partition's part_off, part_size; builds once per run.
race_images() {
    RACE=$WORK/race
    if [[ ! -f $RACE/good.sif ]]; then
        local v
        mkdir -p "$RACE"
        for v in good evil; do
            mkdir -p "$RACE/$v"; cp -a "$WORK/rootfs/." "$RACE/$v/"
            head -c 131072 /dev/urandom > "$RACE/$v/marker"; touch -d @0 "$RACE/$v/marker"
            SOURCE_DATE_EPOCH=0 "$SIFRUN" build --deterministic "$RACE/$v" -o "$RACE/$v.sif" >/dev/null 2>&1
        done
        "$SIFRUN" sign --key "$WORK/a-private.asc" "$RACE/good.sif" >/dev/null 2>&1
        cp "$RACE/good.sif" "$RACE/image.sif"; chown -R "$TEST_USER" "$RACE"
    fi
    GOOD_MD5=$(md5sum < "$RACE/good/marker" | cut -d' ' -f1); EVIL_MD5=$(md5sum < "$RACE/evil/marker" | cut -d' ' -f1)
    read -r part_off part_size < <(partition_of "$RACE/good.sif")
}
# race_against WRITER_PID WRITER_PATTERN ARGS...: 20 steps `secure ARGS...`
# (each printing the md5 of /marker) while the caller's writer, running as
# the test user and matching WRITER_PATTERN, rewrites the image; then the
# writer is stopped. The steps' output is in RACE_OUT, and LAST counts the
# runs that saw the good bytes, were refused, saw the evil bytes.
race_against() {
    local writer=$1 pattern=$2 _
    shift 2
    RACE_OUT=""
    for _ in $(seq 20); do
        secure "$@"
        RACE_OUT+="$LAST"$'\n'
    done
    pkill -u "$TEST_USER" -f "$pattern" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$writer" 2>/dev/null || break; sleep 0.1; done
    LAST="runs: $(grep -c "$GOOD_MD5" <<<"$RACE_OUT") good, $(grep -c 'sifrun: error' <<<"$RACE_OUT") refused, $(grep -c "$EVIL_MD5" <<<"$RACE_OUT") evil"
}
# never_evil: no run of the last race saw the evil bytes, one at least the good ones.
never_evil() { ! grep -q "$EVIL_MD5" <<<"$RACE_OUT" && [[ $(grep -c "$GOOD_MD5" <<<"$RACE_OUT") -ge 1 ]]; }

# partition_of IMAGE: "offset size" of its primary partition.
partition_of() {
    "$SIFRUN" inspect --json "$1" | python3 -c 'import json,sys; d=json.load(sys.stdin); p=[o for o in d["objects"] if o["type"]=="partition"][0]; print(p["offset"], p["size"])'
}

# A fresh WORK and the cluster, with the plugin configured to use the
# fixtures (read per step: they may come after).
start_cluster() {
    # Images this machine's own `sifrun exec` runs keep mounted in its cache
    # show up in every node's namespace (they propagate into it) and would
    # count as the nodes' leftovers: unmounted first.
    "$SIFRUN" cache clean >/dev/null 2>&1 || true
    rm -rf "$WORK"; mkdir -p "$WORK"; chmod 755 "$WORK"
    if [[ ${SIFRUN_INSTALLED:-0} != 1 ]]; then
        install -D -m 0755 "$SIFRUN" "$WORK/bin/sifrun"
        install -D -m 0644 "$SPANK_SO" "$WORK/bin/libsifrun_spank.so"
        SIFRUN=$WORK/bin/sifrun SPANK_SO=$WORK/bin/libsifrun_spank.so
    fi
    cat > "$WORK/sifrun.toml" <<TOML
sifrun = "$SIFRUN"
mount_home = true
setup_timeout_secs = 60
cache_idle_secs = $CACHE_IDLE
ecl_config = "$WORK/ecl/site.toml"
copy_limit_mib = 64
cache_max_images_per_user = 3
TOML
    cluster_up
    TEST_UID=$(id -u "$TEST_USER")
}
# (Re)starts the cluster with the plugin and WORK's configuration; the
# environment may add ci/cluster settings (SIFRUN_JOB_NAMESPACE=...).
cluster_up() {
    SIFRUN_SPANK_SO=$SPANK_SO SIFRUN_SPANK_MODE=required SIFRUN_CONFIG=$WORK/sifrun.toml \
        SIFRUN_CLI_FILTER_SO=$CLI_FILTER_SO \
        ci/cluster start 2 >/dev/null || { ci/cluster logs -n 30; exit 1; }
}

# --- running jobs -----------------------------------------------------------------
as_user() { (cd /tmp && runuser -u "$TEST_USER" -- "$@"); }
# run COMMAND...: as the test user, 60 s at most; output (without srun's
# queue chatter) in LAST, COMMAND's exit status returned.
run() { LAST=$(as_user timeout 60 "$@" 2>&1 | grep -v "^srun: job [0-9]* \(queued\|has been allocated\)"; exit "${PIPESTATUS[0]}"); }
# A step on partition "secure" (the one with an ECL), on node1.
secure() { run srun -N1 -w node1 -p secure "$@"; }
# refused NEEDLE...: LAST is one error line naming partition secure and each needle.
refused() {
    local n
    [[ $(grep -c "sifrun: error:" <<<"$LAST") -eq 1 ]] || return 1
    grep "sifrun: error:" <<<"$LAST" | grep -q "partition secure" || return 1
    for n in "$@"; do grep "sifrun: error:" <<<"$LAST" | grep -qF -- "$n" || return 1; done
}
# A task that escapes its step (own session, parent gone: proctrack/linuxproc
# loses it) as `sleep $1`; prints "escaped" when it did. Run as
# `sh -c "$ESCAPING_TASK" _ SECS`.
# shellcheck disable=SC2016
ESCAPING_TASK='(setsid sleep "$1" </dev/null >/dev/null 2>&1 &); sleep 0.5; for c in /proc/[0-9]*/cmdline; do [ "$(tr "\0" " " <"$c" 2>/dev/null)" = "sleep $1 " ] && echo escaped; done; true'
# gone_within SECS PGREP-ARGS...: no process matches within SECS seconds.
gone_within() {
    local deadline=$((SECONDS + $1)); shift
    while pgrep "$@" >/dev/null; do (( SECONDS < deadline )) || return 1; sleep 0.2; done
}

# --- leftovers --------------------------------------------------------------------
# Loop devices and squashfs mounts on every node (and the host).
leaks() {
    local out pid
    out=$(losetup -a 2>/dev/null | grep -c sifrun-cluster-tests || true)
    for pid in $(pgrep -f 'slurmd -D -N node' || true); do
        out+=" $(grep -c squashfs "/proc/$pid/mountinfo" 2>/dev/null || echo 0)"
    done
    echo "$out"
}
no_leaks() { local l; l=$(leaks); LAST="leaks: $l"; [[ $(tr -d ' 0' <<<"$l") == "" ]]; }
# Images stay cached for CACHE_IDLE seconds after their last step; the
# keeper then unmounts them. Wait that long (plus polling slack), no longer.
settled() {
    local deadline=$((SECONDS + CACHE_IDLE + 5))
    until no_leaks; do (( SECONDS < deadline )) || return 1; sleep 0.25; done
}
slurmd_pid_of() { pgrep -f "slurmd -D -N $1\b" | head -1; }
# Squashfs mounts in node $1's own namespace (the node cache).
node_mounts() { grep -c " squashfs " "/proc/$(slurmd_pid_of "$1")/mountinfo" || true; }
# Loop devices of image $1.
loops_of() { losetup -n -O NAME -j "$1" | wc -l; }
# Ends whatever an area left running as the test user.
end_user_jobs() {
    scancel -u "$TEST_USER" 2>/dev/null || true
    local _
    for _ in $(seq 50); do squeue -h | grep -q . || break; sleep 0.2; done
}
