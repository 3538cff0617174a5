# shellcheck shell=bash
# Cluster tests, area "gpu" (run: tests/cluster/run gpu).
# GPUs from Slurm's allocation (stand-in GPUs made by ci/cluster).

# A stand-in driver in the host's ldconfig cache (a real shared object named
# libcuda.so.1) and tool, so that driver discovery runs end to end.
DRV=/usr/local/lib/sifrun-test-driver
if [[ ! -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 ]]; then
    mkdir -p "$DRV"
    echo 'int sifrun_fake_cuda(void) { return 42; }' > "$DRV/fake.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$DRV/libcuda.so.1" "$DRV/fake.c"
    echo "$DRV" > /etc/ld.so.conf.d/sifrun-test-driver.conf; ldconfig
    printf '#!/bin/sh\necho "GPU 0: sifrun stand-in (UUID: GPU-0)"\n' > /usr/local/bin/nvidia-smi; chmod 755 /usr/local/bin/nvidia-smi
    undo 'rm -rf "$DRV" /etc/ld.so.conf.d/sifrun-test-driver.conf /usr/local/bin/nvidia-smi; ldconfig'
fi
if [[ -c /dev/nvidia0 && -c /dev/nvidia1 ]]; then
    run srun -N1 --gres=gpu:1 --container="$IMG" sh -c 'echo $(ls /dev | grep nvidia) / $(ls /dev/nvidia-caps)'
    check "--gres=gpu:1: the control devices and exactly one GPU inside" \
        bash -c '[[ "$1" == "nvidia-caps nvidia-uvm nvidia-uvm-tools nvidia"[01]" nvidiactl / nvidia-cap1" ]]' _ "$LAST"
    run srun -N1 -n2 --gres=gpu:2 --gpus-per-task=1 --container="$IMG" sh -c 'echo "$SLURM_PROCID cvd=$CUDA_VISIBLE_DEVICES $(ls /dev | grep -c "^nvidia[0-9]")"'
    check "--gpus-per-task=1 -n2: each task keeps its own CUDA_VISIBLE_DEVICES (not the image's)" \
        bash -c '[[ $(sort <<<"$1" | cut -d" " -f2 | sort -u | wc -l) -eq 2 && "$1" != *"cvd=7"* && $(grep -c " 2$" <<<"$1") -eq 2 ]]' _ "$LAST"
    run srun -N1 --container="$IMG" sh -c 'ls /dev | grep -c nvidia; echo "cvd=${CUDA_VISIBLE_DEVICES:-unset}"'
    check "no --gres: no GPU device node inside" test "$(tr '\n' ' ' <<<"$LAST")" = "0 cvd=unset "
    LAST=$(as_user env SLURM_STEP_GPUS=0,1 timeout 60 srun -N1 --export=ALL,SLURM_STEP_GPUS=0,1 --container="$IMG" sh -c 'ls /dev | grep -c nvidia || true' 2>&1)
    check "SLURM_STEP_GPUS in the job's environment gives no GPU" test "$LAST" = "0"
    # The job's NVIDIA_VISIBLE_DEVICES narrows the allocation, never widens it.
    gpus_with() { # VALUE: the GPU device nodes a --gres=gpu:2 step sees
        as_user env NVIDIA_VISIBLE_DEVICES="$1" timeout 60 srun -N1 --gres=gpu:2 --container="$IMG" \
            sh -c 'ls /dev | grep "^nvidia[0-9]" | tr "\n" " "; echo' 2>&1
    }
    LAST="void: $(gpus_with void)| 1: $(gpus_with 1)| all: $(gpus_with all)"
    check "NVIDIA_VISIBLE_DEVICES narrows the step's GPUs: void none, 1 only nvidia1, all both" \
        test "$LAST" = "void: | 1: nvidia1 | all: nvidia0 nvidia1 "
    LAST=$(gpus_with 5)
    check "NVIDIA_VISIBLE_DEVICES naming a GPU outside the allocation fails in one line" \
        bash -c '[[ $(grep -c "sifrun: error: .*NVIDIA_VISIBLE_DEVICES=5: GPU 5 is not in this step.s allocation (0,1)" <<<"$1") -eq 1 ]]' _ "$LAST"
    run srun -N1 --gres=gpu:1 --container="$IMG" sh -c 'ls /.sifrun/gpu/lib; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; nvidia-smi -L'
    check "the host driver's libraries and tools are bound and on the paths" \
        bash -c '[[ "$1" == *"libcuda.so.1"* && "$1" == *"GPU 0: sifrun stand-in"* ]] && grep -qE "^LD_LIBRARY_PATH=(.*:)?/.sifrun/gpu/lib$" <<<"$1"' _ "$LAST"
    run srun -N1 --container="$IMG" sh -c 'ls /.sifrun 2>&1; echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-unset}"'
    # (The image's own LD_LIBRARY_PATH, /.singularity.d/libs from its
    # Apptainer environment scripts, stays.)
    check "without GPUs no driver files and no library path" \
        bash -c '[[ "$1" == *"No such file"* && "$1" != *"/.sifrun/gpu/lib"* ]]' _ "$LAST"
    # An image whose /.sifrun (where GPU driver files are bound) is a symlink
    # into a host directory bound into the container (the node's /tmp): root
    # must not create the driver's mount points there (issue 23).
    mkdir -p "$WORK/rootfs-gpulink"; cp -a "$WORK/rootfs/." "$WORK/rootfs-gpulink/"
    ln -sfn /tmp/sifrun-gpu-attack "$WORK/rootfs-gpulink/.sifrun"
    "$SIFRUN" build --force "$WORK/rootfs-gpulink" -o "$WORK/images/gpu-link.sif" >/dev/null 2>&1
    chmod 644 "$WORK/images/gpu-link.sif"; rm -rf "$WORK/rootfs-gpulink"
    nsenter -t "$(slurmd_pid_of node1)" -m rm -rf /tmp/sifrun-gpu-attack
    run srun -N1 -w node1 --gres=gpu:1 --container="$WORK/images/gpu-link.sif" sh -c 'echo RAN'
    LAST+=$'\n'"on node1: $(nsenter -t "$(slurmd_pid_of node1)" -m sh -c 'find /tmp/sifrun-gpu-attack 2>&1' | tr '\n' ' ')"
    check "attack: an image symlink never makes root create the GPU mount points in a host directory" \
        bash -c '[[ "$1" == *"never creates files in host directories"* && "$1" == *"No such file"* ]] && ! grep -q "^RAN" <<<"$1"' _ "$LAST"
else
    fail "GPU tests" "no stand-in GPUs (ci/cluster makes them when the machine has none)"
fi
# The stand-in driver goes as soon as this area is done, not at the end.
run_undo
