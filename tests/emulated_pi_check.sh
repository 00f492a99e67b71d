#!/usr/bin/env bash
# Manual, opt-in check (not run by pytest; it takes tens of minutes): the device install on
# emulated Raspberry Pi CPUs.
#
# For each target: a Debian bookworm root file system made by debootstrap (cached), the
# wheelhouse deploy/wheelhouse.sh builds, installed offline into a venv by the emulated pip;
# then `edge-agent inspect` and the demo model on the demo video with both runtimes, the
# predictions checked against the video's ground truth, on each CPU:
#   arm64: qemu-aarch64 -cpu cortex-a53 (Pi 3 / Zero 2 W), cortex-a72 (Pi 4), cortex-a76 (Pi 5)
#   armhf: qemu-arm -cpu cortex-a7 (the ARMv7 baseline armhf targets) and max (ARMv8 AArch32,
#          what a Pi 2 v1.2 / 3 / 4 runs 32-bit Raspberry Pi OS on); tflite-runtime only, with
#          Debian's python3-numpy, python3-opencv and python3-cffi in a venv with system site-packages
# plus the model self-test child, `edge-agent doctor`, and the timings (start-up, throughput,
# install) under emulation, which are NOT those of a board: qemu-user translates every
# instruction on an x86 host; compare them only with each other.
#
#   sudo tests/emulated_pi_check.sh [--arch arm64|armhf|all] [--cpus "cortex-a53 ..."] [--frames 50]
#                                   [--cache DIR] [--bundle-arm64 DIR] [--bundle-armhf DIR] [--keep]
#
# Needs root (debootstrap), and: apt-get install --no-install-recommends qemu-user-static debootstrap
# (without binfmt-support nothing is registered with the kernel).
#
# How it avoids what broke earlier attempts:
# - No binfmt handlers: every emulated program is started as `qemu-aarch64-static -L ROOTFS
#   -cpu CPU ROOTFS/.../python`. -L makes qemu look up every absolute path in ROOTFS first, then
#   on the host.
# - LiteRT segfaults at interpreter creation under qemu-user when /proc/cpuinfo lists the host's
#   x86 CPUs: ROOTFS/proc/cpuinfo (and proc/device-tree/model) are a Pi's, from
#   tests/board_fixtures, so the lookup finds them first. debootstrap leaves ROOTFS/proc a
#   symlink to the host's /proc: it is replaced by a plain folder.
# - The host's pip configuration must not reach the emulated pip: a clean environment
#   (env -i: no PIP_FIND_LINKS or other PIP_*), PIP_CONFIG_FILE=/dev/null, and empty
#   ROOTFS/etc/pip.conf and ROOTFS/etc/xdg/pip/pip.conf shadowing the host's; `pip config list`
#   is checked to show nothing but that.
# - Child processes: the agent starts children with sys.executable (every model is first loaded
#   in its self-test child, service/model_guard.py; the doctor's probes). Without binfmt the
#   kernel cannot exec an ARM program, so VENV/bin/python-emulated, a host shell script, runs
#   `qemu -L ROOTFS -cpu CPU -0 VENV/bin/python-emulated ROOTFS/usr/bin/python3.11 "$@"`:
#   -0 sets the emulated program's argv[0], so Python takes the script as sys.executable (and
#   finds the venv beside it), and every child it starts is exec'd by the host kernel as that
#   script, i.e. emulated again on the same CPU. Without the wrapper `edge-agent run` stops with
#   "Exec format error" under emulation (and only there: on a board sys.executable is the ELF).
# - venv's ensurepip runs pip as a child: the venv is made --without-pip, and pip is installed
#   from Debian's pip wheel by running the wheel itself.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${EDGE_AGENT_EMULATION_CACHE:-/var/cache/edge-agent-emulation}
ARCHES=all
CPUS_ARM64="cortex-a53 cortex-a72 cortex-a76"
CPUS_ARMHF="cortex-a7 max"
CPUS=
FRAMES=50
BUNDLE_ARM64=
BUNDLE_ARMHF=
KEEP=0
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STEP_TIMEOUT_S=3600
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCHES=${2:?}; shift 2 ;;
        --cpus) CPUS=${2:?}; shift 2 ;;
        --frames) FRAMES=${2:?}; shift 2 ;;
        --cache) CACHE=${2:?}; shift 2 ;;
        --bundle-arm64) BUNDLE_ARM64=$(cd "${2:?}" && pwd); shift 2 ;;
        --bundle-armhf) BUNDLE_ARMHF=$(cd "${2:?}" && pwd); shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "emulated_pi_check.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$ARCHES" in all) ARCHES="arm64 armhf" ;; arm64|armhf) ;; *) echo "--arch arm64, armhf or all" >&2; exit 2 ;; esac

die() { echo "emulated_pi_check.sh: $*" >&2; exit 1; }
say() { echo "== $*"; }
[ "$(id -u)" = 0 ] || die "run as root (debootstrap): sudo $0"
for tool in debootstrap dpkg-deb; do command -v "$tool" >/dev/null || die "$tool is missing: apt-get install --no-install-recommends qemu-user-static debootstrap"; done
HOST_PYTHON=$REPO/.venv/bin/python
[ -x "$HOST_PYTHON" ] || HOST_PYTHON=$(command -v python3)

WORK=$(mktemp -d /tmp/emulated-pi.XXXX)
cleanup() { [ "$KEEP" = 1 ] && echo "kept $WORK" || rm -rf "$WORK"; }
trap cleanup EXIT
mkdir -p "$WORK/home" "$CACHE"
RESULTS=$WORK/results.jsonl
STARTED=$(date +%s)

for name in qemu-aarch64 qemu-arm; do
    if [ -e "/proc/sys/fs/binfmt_misc/$name" ]; then
        echo "note: a binfmt handler for $name is registered on this host (not by this script); it is not used"
    fi
done

# ---------------------------------------------------------------------------- root file systems
# debootstrap --foreign downloads the packages and unpacks only the essential ones; its second
# stage would run ARM programs (it needs binfmt), so instead every downloaded package is
# unpacked with the host's dpkg-deb. Maintainer scripts do not run, which a Python prefix for
# qemu -L does not need.
make_rootfs() {  # make_rootfs ARCH PACKAGES...; prints its path
    local arch=$1; shift
    local want="$*" rootfs=$CACHE/bookworm-$arch
    if [ -f "$rootfs/.edge-agent-rootfs" ] && [ "$(cat "$rootfs/.edge-agent-rootfs")" = "$want" ]; then
        echo "$rootfs"; return
    fi
    rm -rf "$rootfs" "$rootfs.tmp"
    local started=$SECONDS
    debootstrap --foreign --arch="$arch" --variant=minbase --include="$(echo "$want" | tr ' ' ,)" \
        bookworm "$rootfs.tmp" "$MIRROR" >"$WORK/debootstrap-$arch.log" 2>&1 ||
        die "debootstrap $arch failed: see $WORK/debootstrap-$arch.log (kept: rerun with --keep)"
    local deb
    for deb in "$rootfs.tmp"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | tar -C "$rootfs.tmp" --keep-directory-symlink -xf - ||
            die "cannot unpack $deb"
    done
    rm -rf "$rootfs.tmp/proc"; mkdir -p "$rootfs.tmp/proc/device-tree"   # was a symlink to the host's /proc
    # what libblas3's and liblapack3's maintainer scripts would do (update-alternatives), for numpy
    local lib
    for lib in "$rootfs.tmp"/usr/lib/*-linux-gnu*/blas/libblas.so.3 "$rootfs.tmp"/usr/lib/*-linux-gnu*/lapack/liblapack.so.3; do
        [ -e "$lib" ] || continue
        [ -e "$(dirname "$(dirname "$lib")")/$(basename "$lib")" ] ||
            ln -s "$(basename "$(dirname "$lib")")/$(basename "$lib")" "$(dirname "$(dirname "$lib")")/$(basename "$lib")"
    done
    mkdir -p "$rootfs.tmp/etc/xdg/pip"
    : > "$rootfs.tmp/etc/pip.conf"; : > "$rootfs.tmp/etc/xdg/pip/pip.conf"   # shadow the host's
    echo "$want" > "$rootfs.tmp/.edge-agent-rootfs"
    mv "$rootfs.tmp" "$rootfs"
    echo "   made $rootfs in $((SECONDS - started)) s ($(du -sh "$rootfs" | cut -f1))" >&2
    echo "$rootfs"
}

board_for_cpu() {  # the Pi whose /proc/cpuinfo and model an emulated CPU gets
    case "$1" in
        cortex-a53) echo "$REPO/tests/board_fixtures/cpuinfo/raspberry-pi-3-arm64" ;;
        cortex-a72) echo "$REPO/tests/board_fixtures/pi4-usb-coral/root/proc/cpuinfo" ;;
        cortex-a76) echo "$REPO/tests/board_fixtures/pi5-pcie-coral/root/proc/cpuinfo" ;;
        *) echo "$REPO/tests/board_fixtures/pi3-32bit/root/proc/cpuinfo" ;;
    esac
}

# ---------------------------------------------------------------------------- emulated commands
ROOTFS= QEMU= CPU= VENV=
clean_env() {  # nothing from this host's environment but what is named here
    env -i PATH=/usr/bin:/bin HOME="$WORK/home" LANG=C.UTF-8 TZ=UTC PYTHONNOUSERSITE=1 \
        PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}
emulated() {  # emulated PROGRAM ARGS...: run an ARM program of ROOTFS on CPU
    clean_env timeout "$STEP_TIMEOUT_S" "$QEMU" -L "$ROOTFS" -cpu "$CPU" "$@"
}
venv_python() {  # venv_python ARGS...: the venv's Python on CPU, whose children are emulated too
    clean_env timeout "$STEP_TIMEOUT_S" "$VENV/bin/python-emulated" "$@"
}
write_wrapper() {  # the sys.executable the agent's children are started with (see the header)
    [ -d "$VENV/bin" ] || return 0
    local python
    python=$(readlink -f "$ROOTFS/usr/bin/python3")
    printf '#!/bin/sh\nexec %s -L %s -cpu %s -0 "$0" %s "$@"\n' "$QEMU" "$ROOTFS" "$CPU" "$python" > "$VENV/bin/python-emulated"
    chmod 755 "$VENV/bin/python-emulated"
}
use_cpu() {
    CPU=$1
    local cpuinfo; cpuinfo=$(board_for_cpu "$CPU")
    cp "$cpuinfo" "$ROOTFS/proc/cpuinfo"
    sed -n 's/^Model[[:space:]]*: //p' "$cpuinfo" | tr -d '\n' > "$ROOTFS/proc/device-tree/model"
    printf '\0' >> "$ROOTFS/proc/device-tree/model"
    write_wrapper
}
seconds_of() {  # seconds_of COMMAND...: runs it, prints wall seconds on fd 3
    local start end
    start=$(date +%s.%N); "$@"; end=$(date +%s.%N)
    echo "$start $end" | awk '{printf "%.1f\n", $2 - $1}' >&3
}
record() { echo "$1" >> "$RESULTS"; }

check_pip_config() {  # only the three settings clean_env gives: no file, no other variable
    local shown leaked
    shown=$(venv_python -m pip config list 2>&1)
    leaked=$(echo "$shown" | grep -v -x -e ":env:.config-file='/dev/null'" -e ":env:.no-input='1'" \
                                        -e ":env:.disable-pip-version-check='1'" || true)
    [ -z "$leaked" ] || die "the emulated pip sees configuration it must not: $leaked"
}

make_venv() {  # make_venv [--system-site-packages]
    rm -rf "$VENV"
    emulated "$ROOTFS/usr/bin/python3" -m venv --without-pip "$@" "$VENV"
    write_wrapper
    local wheel; wheel=$(ls "$ROOTFS"/usr/share/python-wheels/pip-*.whl)
    venv_python "$wheel/pip" install --quiet --no-index "$wheel"
    check_pip_config
}

demo_run() {  # demo_run RUNTIME: inspect (start-up) and FRAMES demo frames; checks the truth
    local runtime=$1 demo out err startup run
    demo=$(venv_python -c 'from edge_agent.data import demo_dir; print(demo_dir())')
    out=$WORK/run-$ARCH-$CPU-$runtime.jsonl; err=$WORK/run-$ARCH-$CPU-$runtime.err
    startup=$( { seconds_of venv_python -m edge_agent inspect "$demo/digits_int8.tflite" --runtime "$runtime" \
                 >"$WORK/inspect.out" 2>"$WORK/inspect.err"; } 3>&1 ) ||
        die "inspect failed on $CPU with $runtime: $(tail -3 "$WORK/inspect.err")"
    grep -q "^runtime   $runtime" "$WORK/inspect.out" || die "inspect did not use $runtime: $(cat "$WORK/inspect.out")"
    run=$( { seconds_of venv_python -m edge_agent run --model "$demo/digits_int8.tflite" \
             --source "$demo/digits-demo.avi" --no-mqtt --max-frames "$FRAMES" --runtime "$runtime" >"$out" 2>"$err"; } 3>&1 ) ||
        die "the demo failed on $CPU with $runtime (exit status above; an illegal instruction is signal 4): $(tail -3 "$err")"
    "$HOST_PYTHON" - "$out" "$demo/digits-demo.truth.txt" "$FRAMES" "$startup" "$run" "$ARCH" "$CPU" "$runtime" <<'EOF' >>"$RESULTS"
import json, sys
out, truth, frames, startup, run, arch, cpu, runtime = sys.argv[1:]
predictions = [json.loads(line) for line in open(out)]
truth = open(truth).read().split()
right = sum(p["classes"][0]["label"] == t for p, t in zip(predictions, truth))
ts = [p["ts"] for p in predictions]
fps = (len(ts) - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0
inference = sorted(p["latency_ms"]["inference"] for p in predictions)
row = {"arch": arch, "cpu": cpu, "runtime": runtime, "frames": len(predictions), "right": right,
       "startup_s": float(startup), "run_s": float(run), "fps": round(fps, 1),
       "inference_ms_median": inference[len(inference) // 2] if inference else None}
print(json.dumps(row))
if len(predictions) != int(frames) or right < 0.9 * int(frames):
    sys.exit(f"{cpu} {runtime}: {right}/{len(predictions)} right (want {frames} predictions, 90 % right)")
EOF
    tail -1 "$RESULTS" | "$HOST_PYTHON" -c 'import json, sys; r = json.load(sys.stdin); print("   {cpu:<11} {runtime:<15} {right}/{frames} right, start-up {startup_s} s, {fps} frames/s, inference {inference_ms_median} ms".format(**r))'
}

selftest_child() {  # the push self-test's child, started through the emulator as the agent would start it
    local demo request answer
    demo=$(venv_python -c 'from edge_agent.data import demo_dir; print(demo_dir())')
    request=$("$HOST_PYTHON" -c 'import json,sys; print(json.dumps({"config": {"mqtt": {"enabled": False}, "pipelines": {"main": {
        "source": sys.argv[1], "model": sys.argv[2], "runtime": sys.argv[3], "sinks": ["stdout"]}}}, "base_dir": "/",
        "pipeline": "main", "model": sys.argv[2], "label": "emulated", "trusted_keys": [], "allow_unsigned_models": True}))' \
        "$demo/digits-demo.avi" "$demo/digits_int8.tflite" "$1")
    answer=$(echo "$request" | venv_python -m edge_agent selftest 2>"$WORK/selftest.err" | tail -1)
    echo "$answer" | grep -q '"ok": true' || die "the self-test child failed under emulation: $answer $(tail -3 "$WORK/selftest.err")"
    echo "   self-test child on $CPU ($1): $(echo "$answer" | cut -c1-140)"
}

doctor_under_emulation() {  # what `edge-agent doctor` says about the emulated interpreter
    venv_python -m edge_agent doctor --json >"$WORK/doctor-$ARCH.json" 2>"$WORK/doctor-$ARCH.err" || true
    "$HOST_PYTHON" - "$WORK/doctor-$ARCH.json" "$1" "$2" <<'EOF'
import json, sys
report, machine, bits = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3])
found = {f"{c['area']}/{c['name']}": c for c in report["checks"]}
arch = found["system/architecture"]["details"]
for name in ("system/board", "system/architecture", "system/glibc", "packages/versions", "packages/runtimes", "packages/imports"):
    if name in found:
        print(f"   doctor {found[name]['status']:<4} {name}: {found[name]['summary'][:150]}")
if (arch["python_machine"], arch["python_bits"]) != (machine, bits):
    sys.exit(f"the doctor saw {arch['python_machine']}/{arch['python_bits']}, not {machine}/{bits}")
EOF
}

# ---------------------------------------------------------------------------- the targets
run_arm64() {
    ARCH=arm64 QEMU=$(command -v qemu-aarch64-static) || die "qemu-aarch64-static is missing: apt-get install --no-install-recommends qemu-user-static"
    say "arm64: Debian bookworm root file system (cache: $CACHE)"
    ROOTFS=$(make_rootfs arm64 python3 python3-venv)
    if [ -z "$BUNDLE_ARM64" ]; then
        say "arm64: the wheelhouse (deploy/wheelhouse.sh --machine aarch64)"
        local started=$SECONDS
        "$REPO/deploy/wheelhouse.sh" --machine aarch64 --python-version 3.11 --out "$WORK/bundle-arm64" --python "$HOST_PYTHON" >"$WORK/wheelhouse-arm64.log" 2>&1 ||
            die "wheelhouse.sh failed: $(tail -5 "$WORK/wheelhouse-arm64.log")"
        BUNDLE_ARM64=$WORK/bundle-arm64
        record "{\"arch\": \"arm64\", \"wheelhouse_build_s\": $((SECONDS - started))}"
    fi
    record "{\"arch\": \"arm64\", \"wheelhouse_mb\": $(du -sm "$BUNDLE_ARM64/wheels" | cut -f1), \"wheels\": $(ls "$BUNDLE_ARM64"/wheels/*.whl | wc -l)}"
    local cpus=${CPUS:-$CPUS_ARM64} first
    first=${cpus%% *}
    VENV=$WORK/venv-arm64
    use_cpu "$first"
    say "arm64: offline install of the wheelhouse on emulated $first"
    local install
    install=$( { seconds_of make_venv >&2; } 3>&1 )
    local pip_s
    pip_s=$( { seconds_of venv_python -m pip install --quiet --no-index --find-links "$BUNDLE_ARM64/wheels" \
               "edge-agent[tflite-runtime]" >&2; } 3>&1 ) || die "the emulated pip could not install the wheelhouse"
    record "{\"arch\": \"arm64\", \"cpu\": \"$first\", \"venv_s\": $install, \"install_s\": $pip_s}"
    echo "   venv in $install s, wheelhouse installed in $pip_s s"
    for cpu in $cpus; do
        use_cpu "$cpu"
        say "arm64 on $cpu ($(tr -d '\0' < "$ROOTFS/proc/device-tree/model"))"
        demo_run litert
        demo_run tflite-runtime
    done
    use_cpu cortex-a72
    selftest_child litert
    doctor_under_emulation aarch64 64
}

run_armhf() {
    ARCH=armhf QEMU=$(command -v qemu-arm-static) || die "qemu-arm-static is missing: apt-get install --no-install-recommends qemu-user-static"
    say "armhf: Debian bookworm root file system with python3-numpy, python3-opencv, python3-cffi (cache: $CACHE)"
    ROOTFS=$(make_rootfs armhf python3 python3-venv python3-numpy python3-opencv python3-cffi)
    if [ -z "$BUNDLE_ARMHF" ]; then
        say "armhf: the wheelhouse (deploy/wheelhouse.sh --machine armv7l)"
        local started=$SECONDS
        "$REPO/deploy/wheelhouse.sh" --machine armv7l --python-version 3.11 --out "$WORK/bundle-armhf" --python "$HOST_PYTHON" >"$WORK/wheelhouse-armhf.log" 2>&1 ||
            die "wheelhouse.sh --machine armv7l failed: $(tail -5 "$WORK/wheelhouse-armhf.log")"
        BUNDLE_ARMHF=$WORK/bundle-armhf
        record "{\"arch\": \"armhf\", \"wheelhouse_build_s\": $((SECONDS - started))}"
    fi
    record "{\"arch\": \"armhf\", \"wheelhouse_mb\": $(du -sm "$BUNDLE_ARMHF/wheels" | cut -f1), \"wheels\": $(ls "$BUNDLE_ARMHF"/wheels/*.whl | wc -l)}"
    local cpus=${CPUS:-$CPUS_ARMHF} first
    first=${cpus%% *}
    VENV=$WORK/venv-armhf
    use_cpu "$first"
    say "armhf: offline install on emulated $first, as install.sh does on 32-bit Raspberry Pi OS"
    local install pip_s
    install=$( { seconds_of make_venv --system-site-packages >&2; } 3>&1 )
    # install.sh's 32-bit path: the wheelhouse's own requirements (numpy, OpenCV and cffi come from apt)
    pip_s=$( { seconds_of venv_python -m pip install --quiet --no-index --find-links "$BUNDLE_ARMHF/wheels" \
               --no-deps edge-agent -r "$BUNDLE_ARMHF/wheels/requirements.txt" >&2; } 3>&1 ) ||
        die "the emulated pip could not install the armv7l wheelhouse"
    record "{\"arch\": \"armhf\", \"cpu\": \"$first\", \"venv_s\": $install, \"install_s\": $pip_s}"
    echo "   venv in $install s, wheelhouse installed in $pip_s s"
    for cpu in $cpus; do
        use_cpu "$cpu"
        say "armhf on $cpu"
        demo_run tflite-runtime
    done
    selftest_child tflite-runtime
    doctor_under_emulation armv7l 32
}

for arch in $ARCHES; do "run_$arch"; done

say "summary (emulated: qemu-user on $(nproc) x86 cores; not a board's speed)"
"$HOST_PYTHON" - "$RESULTS" "$(( $(date +%s) - STARTED ))" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if "wheelhouse_mb" in r:
        print(f"{r['arch']}: wheelhouse {r['wheelhouse_mb']} MB, {r['wheels']} wheels")
    if "install_s" in r:
        print(f"{r['arch']}: offline install {r['install_s']} s on emulated {r['cpu']} (venv {r['venv_s']} s)")
print(f"{'arch':<6} {'cpu':<11} {'runtime':<15} {'right':>7} {'start-up s':>10} {'frames/s':>9} {'inference ms':>12}")
for r in rows:
    if "runtime" in r:
        print(f"{r['arch']:<6} {r['cpu']:<11} {r['runtime']:<15} {r['right']:>3}/{r['frames']:<3} {r['startup_s']:>10} {r['fps']:>9} {r['inference_ms_median']:>12}")
print(f"total {int(sys.argv[2]) // 60} min {int(sys.argv[2]) % 60} s")
EOF
cp "$RESULTS" "$CACHE/last-results.jsonl"
echo "results: $CACHE/last-results.jsonl"
