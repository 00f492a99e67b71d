#!/usr/bin/env bash
# Build an offline install bundle for boards, on a workstation with internet access:
#
#   deploy/wheelhouse.sh                      # aarch64, CPython 3.11 (Raspberry Pi OS / Debian 12)
#   deploy/wheelhouse.sh --machine armv7l     # 32-bit Raspberry Pi OS: numpy, OpenCV, cffi from apt
#   deploy/wheelhouse.sh --out /media/usb/edge-agent
#   deploy/wheelhouse.sh --no-index --find-links DIR   # offline, from wheels already in DIR
#
# The bundle holds the wheels of the device requirements (pyproject.toml's dependencies plus
# the tflite-runtime extra; never TensorFlow) for the target, the project's own wheel, and what
# install.sh needs beside them, laid out like the repository:
#
#   OUT/wheels/*.whl, manifest.txt, requirements.txt, SHA256SUMS
#   OUT/deploy/install.sh, OUT/deploy/agent.example.toml, OUT/systemd/edge-agent.service,
#   OUT/systemd/edge-agent-firstboot.service (install.sh --first-boot, for SD-card images),
#   OUT/README.md
#
# The demo model and video travel inside the edge-agent wheel (package data); install.sh copies
# them from the installed package to /opt/edge-agent/models/demo.
#
# On the board: sudo bash OUT/deploy/install.sh --wheelhouse OUT/wheels
# (bash, because a copy on a FAT USB stick loses the run bit: ./install.sh says "Permission denied")
set -euo pipefail

usage() {
    cat <<'EOF'
usage: wheelhouse.sh [--machine aarch64] [--python-version 3.11] [--out DIR] [--python PYTHON]
                     [--find-links DIR ...] [--no-index]

  --machine         the board's userland: aarch64 (default; 64-bit Raspberry Pi OS, Debian 12),
                    armv7l (32-bit Raspberry Pi OS: file /usr/bin/python3.11 says "ARM, EABI5",
                    whatever `uname -m` says) or x86_64
  --python-version  the board's python3 version, MAJOR.MINOR (default 3.11: Debian 12, Pi OS bookworm)
  --out DIR         where to write the bundle (default dist/edge-agent-VERSION-MACHINE-cpXY)
  --python PYTHON   the workstation interpreter that runs pip (default python3)
  --find-links DIR  also take wheels from DIR (repeatable); pip's own PIP_* settings apply too
  --no-index        only from --find-links: no package index, no network. DIR must then hold
                    the board's wheels and, for building edge-agent's own wheel, setuptools
                    and wheel for this workstation
EOF
}

MACHINE=aarch64
PY_VERSION=3.11
OUT=
PYTHON=${PYTHON:-python3}
FIND_LINKS=()
NO_INDEX=0
while [ $# -gt 0 ]; do
    case "$1" in
        --machine) MACHINE=${2:?}; shift 2 ;;
        --python-version) PY_VERSION=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --python) PYTHON=${2:?}; shift 2 ;;
        --find-links) FIND_LINKS+=("${2:?--find-links needs a directory}"); shift 2 ;;
        --no-index) NO_INDEX=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "wheelhouse.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "wheelhouse.sh: $*" >&2; exit 1; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/edge_agent/__init__.py")
ABI=cp${PY_VERSION/./}
OUT=${OUT:-$REPO/dist/edge-agent-$VERSION-$MACHINE-$ABI}
WHEELS=$OUT/wheels
HELPER=("$PYTHON" -B "$REPO/deploy/wheelhouse.py")  # -B: no __pycache__ in the repository

"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip: sudo apt install python3-pip, or --python .venv/bin/python"
[[ "$PY_VERSION" =~ ^3\.[0-9]+$ ]] || die "--python-version wants MAJOR.MINOR, e.g. 3.11"
SOURCES=()  # pip options saying where wheels come from
for dir in "${FIND_LINKS[@]}"; do
    [ -d "$dir" ] || die "--find-links $dir is not a directory"
    SOURCES+=(--find-links "$(cd "$dir" && pwd)")
done
WHERE="the index"
if [ "$NO_INDEX" = 1 ]; then
    [ ${#FIND_LINKS[@]} -gt 0 ] || die "--no-index needs --find-links DIR (where else would the wheels come from?)"
    SOURCES+=(--no-index)
    WHERE="--find-links ${FIND_LINKS[*]}"
fi

rm -rf "$WHEELS"
mkdir -p "$WHEELS"
REQUIREMENTS=$OUT/requirements.txt
"${HELPER[@]}" requirements --machine "$MACHINE" --python-version "$PY_VERSION" > "$REQUIREMENTS"
# Targets that take some packages from apt get exactly their requirement list, unresolved
# (cryptography's cffi, for one, has no armv7l wheel: python3-cffi stands in).
SYSTEM_PACKAGES=$("${HELPER[@]}" system-packages --machine "$MACHINE")
NO_DEPS=()
[ -z "$SYSTEM_PACKAGES" ] || NO_DEPS=(--no-deps)

TARGET=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp --abi "$ABI")
for tag in $("$PYTHON" -B -c "import sys; sys.path.insert(0, '$REPO/deploy'); import wheelhouse; print(*wheelhouse.platforms('$MACHINE'))"); do
    TARGET+=(--platform "$tag")
done
PIP=("$PYTHON" -m pip --disable-pip-version-check --no-input)

echo "collecting wheels for CPython $PY_VERSION on $MACHINE from $WHERE into $WHEELS"
if ! "${PIP[@]}" download --quiet "${SOURCES[@]}" "${NO_DEPS[@]}" "${TARGET[@]}" --dest "$WHEELS" -r "$REQUIREMENTS"; then
    # One resolution for all keeps versions consistent; when it fails, ask requirement by
    # requirement so the message names the one without a wheel for the board.
    missing=()
    scratch=$(mktemp -d)
    while read -r requirement; do
        "${PIP[@]}" download --quiet --no-deps "${SOURCES[@]}" "${TARGET[@]}" --dest "$scratch" "$requirement" >/dev/null 2>&1 ||
            missing+=("$requirement")
    done < "$REQUIREMENTS"
    rm -rf "$scratch"
    [ ${#missing[@]} -eq 0 ] && die "pip could not resolve the requirements together (see above)"
    [ "$WHERE" = "the index" ] || where_note=" (looked only in $WHERE)"
    die "no wheel on the index for CPython $PY_VERSION on $MACHINE (manylinux <= 2.34)${where_note:-}: ${missing[*]}"
fi

# The project's own wheel, built from a clean copy so no build/ or egg-info lands in the repository.
echo "building the edge-agent $VERSION wheel"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/edge_agent" "$build/"
find "$build" -name __pycache__ -prune -exec rm -rf {} +
"${PIP[@]}" wheel --quiet --no-deps "${SOURCES[@]}" --wheel-dir "$WHEELS" "$build" ||
    die "could not build the edge-agent wheel (offline: --find-links needs setuptools and wheel for this machine)"

"${HELPER[@]}" check "$WHEELS" --machine "$MACHINE" --python-version "$PY_VERSION" || exit 1

# What install.sh needs beside the wheels, in the repository's layout.
install -D -m 0755 "$REPO/deploy/install.sh" "$OUT/deploy/install.sh"
install -D -m 0644 "$REPO/deploy/agent.example.toml" "$OUT/deploy/agent.example.toml"
install -D -m 0644 "$REPO/systemd/edge-agent.service" "$OUT/systemd/edge-agent.service"
install -D -m 0644 "$REPO/systemd/edge-agent-firstboot.service" "$OUT/systemd/edge-agent-firstboot.service"
install -D -m 0644 "$REPO/README.md" "$OUT/README.md"
rm -rf "$OUT/models"  # bundles of earlier versions carried the demo files here

count=$(find "$WHEELS" -name '*.whl' | wc -l)
echo "wheelhouse ready: $OUT ($count wheels, $(du -sh "$OUT" | cut -f1))"
[ -z "$SYSTEM_PACKAGES" ] || echo "on the board, first: sudo apt install $SYSTEM_PACKAGES"
# `bash`: a copy on a FAT USB stick has no run bit, and ./install.sh would say "Permission denied"
echo "copy it to the board and run: sudo bash $(basename "$OUT")/deploy/install.sh --wheelhouse $(basename "$OUT")/wheels"
