#!/bin/sh
# sifrun site hook "mpi": the node's MPI library in place of the image's,
# for MPICH-ABI MPIs (MPICH, Cray MPICH, MVAPICH, Intel MPI), as Sarus'
# MPI hook does, so that a container reaches the node's network at the
# speed of the host's MPI and libfabric.
#
# Install as /etc/sifrun/hooks.d/mpi.sh (root's, mode 755), then offer it
# (user_hooks = ["mpi"]: users write `srun --container-hooks=mpi`) or run
# it for every container (hooks = ["mpi"]). An image without an MPICH-ABI
# library is left alone.
#
# The ABI check: the image's libmpi.so.12 / libmpich.so.12 and the host's
# must have the same major version, and the host's minor version must be at
# least the image's (a library may add, never remove, what programs built
# against an older one use). Otherwise the step fails in one line.
#
# Nothing is written into the image's tree: the binds are declared in
# $SIFRUN_MOUNTS_FILE and made by sifrun, which resolves each container
# path inside the container's root. The image's names are only read.
set -eu

# --- settings -------------------------------------------------------------
# The host's MPICH-ABI library (empty: libmpi.so.12, else libmpich.so.12,
# from the host's ldconfig cache).
HOST_MPI_LIB=""
# Host libraries the host's MPI needs that images do not have (libfabric,
# libcxi, a PMI library ...), space separated; bound beside the image's MPI
# library under their own names.
HOST_MPI_DEPS=""
# Where images keep their MPI library.
IMAGE_LIB_DIRS="/usr/lib/x86_64-linux-gnu /usr/lib64 /usr/lib /lib/x86_64-linux-gnu /lib64 /usr/local/lib /opt/mpich/lib /opt/cray/pe/lib64"
# --------------------------------------------------------------------------

[ "${SIFRUN_HOOK_POINT:-}" = setup ] || exit 0
: "${SIFRUN_ROOTFS:?}" "${SIFRUN_MOUNTS_FILE:?}" "${SIFRUN_ENV_FILE:?}"

# "libmpich.so.12.2.2" -> "12 2" (a missing minor counts as 0).
version_of() {
    printf '%s\n' "$1" | sed -n 's/.*\.so\.\([0-9][0-9]*\)\(\.\([0-9][0-9]*\)\)\{0,1\}.*/\1 \3/p' | awk '{ print $1, ($2 == "" ? 0 : $2) }'
}

# The image's library: its path, and the name its symlink points to (read
# with readlink only: the bind itself is made by sifrun, which resolves the
# path inside the container's root). Looked for before the node's, so that
# an image without one is left alone on any node.
image_lib="" image_name=""
for dir in $IMAGE_LIB_DIRS; do
    for name in libmpi.so.12 libmpich.so.12; do
        path="$SIFRUN_ROOTFS$dir/$name"
        if [ -L "$path" ] || [ -f "$path" ]; then
            image_lib="$dir/$name"
            image_name=$(basename "$(readlink "$path" 2>/dev/null || echo "$name")")
            break 2
        fi
    done
done
if [ -z "$image_lib" ]; then
    echo "mpi hook: no MPICH-ABI library in the image: left alone" >&2
    exit 0
fi

if [ -z "$HOST_MPI_LIB" ]; then
    for name in libmpi.so.12 libmpich.so.12; do
        HOST_MPI_LIB=$(ldconfig -p | awk -v n="$name" '$1 == n { print $NF; exit }')
        [ -n "$HOST_MPI_LIB" ] && break
    done
fi
[ -n "$HOST_MPI_LIB" ] || { echo "mpi hook: no MPICH-ABI library on this node" >&2; exit 1; }
host_real=$(readlink -f "$HOST_MPI_LIB")

set -- $(version_of "$(basename "$host_real")")
host_major=$1 host_minor=$2
set -- $(version_of "$image_name")
image_major=$1 image_minor=$2
if [ "$host_major" != "$image_major" ] || [ "$host_minor" -lt "$image_minor" ]; then
    echo "mpi hook: the image's MPI ($image_name, ABI $image_major.$image_minor) cannot use the node's ($(basename "$host_real"), ABI $host_major.$host_minor)" >&2
    exit 1
fi

echo "$host_real:$image_lib:ro" >> "$SIFRUN_MOUNTS_FILE"
image_dir=$(dirname "$image_lib")
for dep in $HOST_MPI_DEPS; do
    echo "$(readlink -f "$dep"):$image_dir/$(basename "$dep"):ro" >> "$SIFRUN_MOUNTS_FILE"
done
echo "MPI_HOOK_HOST_LIB=$host_real" >> "$SIFRUN_ENV_FILE"
echo "mpi hook: $image_lib ($image_name) is the node's $host_real" >&2
