#!/usr/bin/env bash
# Install edge-agent on a board as a systemd service, or remove it again.
#
#   sudo bash deploy/install.sh                    from this repository (builds its wheel; needs PyPI)
#   sudo bash deploy/install.sh --wheelhouse DIR   offline, from deploy/wheelhouse.sh's bundle
#   sudo bash deploy/install.sh --root IMG --wheelhouse DIR --first-boot
#                                                  an SD-card image: installed at its first boot
#   sudo bash deploy/install.sh --uninstall [--purge]
#
# `bash install.sh`, not `./install.sh`: a copy on a FAT USB stick has no run bit (desktop
# automount mounts FAT with showexec), so running it directly says "Permission denied".
#
# What it puts where:
#   /opt/edge-agent/venv                 a venv with edge-agent (and --system-site-packages when
#                                        the system python has Picamera2, so CSI cameras work)
#   /opt/edge-agent/models/demo          the demo model and video, copied from the installed package
#   /etc/edge-agent/agent.toml           from deploy/agent.example.toml, only when missing
#   /etc/edge-agent/mqtt_password        empty, root-only, when missing (the unit's LoadCredential=)
#   /etc/systemd/system/edge-agent.service, enabled (started by you once the config is right)
#   user edge-agent (no login)           in the groups video, dialout, plugdev (and apex when
#                                        gasket-dkms made it: the PCIe Coral's /dev/apex_N)
#
# Running it again changes only what differs and says so; a changed package restarts a running
# service. The package is always installed as a wheel (a source tree is built into one first),
# never editable, so the board runs what `pip install edge-agent` gives. The unit and example
# config come from the tree this script is in (the repository, or the bundle
# deploy/wheelhouse.sh writes); the demo files come from the installed package (they are its
# package data), so they always match its version; --from only chooses the package.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: sudo bash install.sh [--root DIR] [--wheelhouse DIR] [--from PATH] [--python PYTHON]
       sudo bash install.sh --root DIR --wheelhouse DIR --first-boot
       sudo bash install.sh --uninstall [--purge] [--root DIR]

  --root DIR        install under DIR instead of / (tests, image staging): no running service
                    is touched, the user goes into DIR/etc/passwd (skipped when DIR has none),
                    and the unit is enabled with `systemctl --root`
  --wheelhouse DIR  install offline from DIR (pip --no-index --find-links DIR)
  --from PATH       the project: a source tree (built into a wheel) or a .whl (default: this
                    repository, or with --wheelhouse the edge-agent wheel in it)
  --python PYTHON   the interpreter for the venv (default /usr/bin/python3)
  --first-boot      with --root and --wheelhouse: for an image built on another machine
                    (an x86 workstation cannot run the board's Python without emulation, and
                    LiteRT crashes under qemu-user): put the user, the config and the units in
                    DIR now, copy the bundle to DIR/opt/edge-agent/bundle, and let
                    edge-agent-firstboot.service install the venv at the board's first boot
  --uninstall       remove the unit, the venv and the user; keep /etc/edge-agent and
                    /var/lib/edge-agent
  --purge           with --uninstall: remove /etc/edge-agent and /var/lib/edge-agent too
EOF
}

ARGS="$*"
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE_TREE=$(dirname "$SCRIPT_DIR")   # the repository, or the root of a wheelhouse bundle

ROOT=/
WHEELHOUSE=
FROM=
PYTHON=
ACTION=install
PURGE=0
FIRST_BOOT=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift 2 ;;
        --from) FROM=${2:?--from needs a path}; shift 2 ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        --first-boot) FIRST_BOOT=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "install.sh: $*" >&2; exit 1; }
CHANGES=0
CONFIG_CREATED=0
changed() { CHANGES=$((CHANGES + 1)); echo "  + $*"; }
same() { echo "  = $*"; }
note() { echo "  ! $*"; }

[ "$PURGE" = 0 ] || [ "$ACTION" = uninstall ] || die "--purge goes with --uninstall"
if [ "$FIRST_BOOT" = 1 ]; then
    [ "$ROOT" != / ] || die "--first-boot is for an image: give --root DIR (the image's root folder)"
    [ -n "$WHEELHOUSE" ] || die "--first-boot installs offline at the first boot: give --wheelhouse DIR"
    [ "$ACTION" = install ] || die "--first-boot goes with an install, not --uninstall"
fi
if [ "$ROOT" = / ]; then
    [ "$(id -u)" = 0 ] || die "run as root: sudo bash $0 $ARGS"
    PREFIX=
else
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    PREFIX=$ROOT
fi

NAME=edge-agent
UNIT=edge-agent.service
SERVICE_GROUPS=(video dialout plugdev)
OPTIONAL_GROUPS=(apex)  # joined only where the group exists (gasket-dkms creates it for /dev/apex_N)
APP_DIR=$PREFIX/opt/edge-agent
VENV=$APP_DIR/venv
CONF_DIR=$PREFIX/etc/edge-agent
STATE_DIR=$PREFIX/var/lib/edge-agent
UNIT_PATH=$PREFIX/etc/systemd/system/$UNIT
FINGERPRINT=$APP_DIR/.installed
FIRSTBOOT_UNIT=edge-agent-firstboot.service
BUNDLE_COPY=$APP_DIR/bundle   # --first-boot: the bundle the board installs from

# --- accounts -------------------------------------------------------------------------
# Under --root the host's /etc/passwd is never touched: useradd/groupadd --prefix edit
# DIR/etc/{passwd,group,shadow,gshadow}. A bare DIR without those files (a throwaway test
# root) gets no user; installing into the real board (or running this inside the image)
# creates it.
accounts_here() {
    [ -z "$PREFIX" ] && return 0
    [ -f "$PREFIX/etc/passwd" ] && [ -f "$PREFIX/etc/group" ]
}
prefix_opt() { [ -z "$PREFIX" ] || printf '%s\n' --prefix "$PREFIX"; }
account_line() {  # account_line passwd|group NAME
    if [ -z "$PREFIX" ]; then getent "$1" "$2" || true; else grep "^$2:" "$PREFIX/etc/$1" || true; fi
}
group_id() { ! accounts_here || account_line group "$1" | cut -d: -f3; }
in_group() { account_line group "$1" | cut -d: -f4 | tr ',' '\n' | grep -qx "$NAME"; }

ensure_accounts() {
    if ! accounts_here; then
        note "no $PREFIX/etc/passwd: user $NAME not created (create it when installing on the board)"
        return
    fi
    local group opts
    mapfile -t opts < <(prefix_opt)
    for group in "${SERVICE_GROUPS[@]}"; do
        if [ -z "$(account_line group "$group")" ]; then
            groupadd "${opts[@]}" --system "$group"
            changed "group $group"
        fi
    done
    if [ -z "$(account_line passwd "$NAME")" ]; then
        local groups=("${SERVICE_GROUPS[@]}")
        for group in "${OPTIONAL_GROUPS[@]}"; do [ -z "$(account_line group "$group")" ] || groups+=("$group"); done
        useradd "${opts[@]}" --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
            --shell /usr/sbin/nologin --comment "edge-agent daemon" \
            --groups "$(IFS=,; echo "${groups[*]}")" "$NAME"
        changed "user $NAME (groups ${groups[*]})"
        return
    fi
    local missing=()
    for group in "${SERVICE_GROUPS[@]}"; do in_group "$group" || missing+=("$group"); done
    for group in "${OPTIONAL_GROUPS[@]}"; do
        [ -z "$(account_line group "$group")" ] || in_group "$group" || missing+=("$group")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        usermod "${opts[@]}" --append --groups "$(IFS=,; echo "${missing[*]}")" "$NAME"
        changed "user $NAME joined ${missing[*]}"
    else
        same "user $NAME"
    fi
}

# --- files ----------------------------------------------------------------------------
put_file() {  # put_file SOURCE DEST MODE [GROUP_ID]: copy when content or mode differ
    local source=$1 dest=$2 mode=$3 gid=${4:-0}
    if [ -f "$dest" ] && cmp -s "$source" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
        same "${dest#"$PREFIX"}"
        return 1
    fi
    install -D -m "$mode" -o 0 -g "$gid" "$source" "$dest" || die "cannot write $dest"
    changed "${dest#"$PREFIX"}"
}

install_files() {
    local gid
    [ ! -f "$SOURCE_TREE/README.md" ] || put_file "$SOURCE_TREE/README.md" "$APP_DIR/README.md" 0644 || true
    install -d -m 0755 "$CONF_DIR"
    # The reference copy is refreshed on every install, so `diff` shows what a new version offers.
    put_file "$SOURCE_TREE/deploy/agent.example.toml" "$CONF_DIR/agent.example.toml" 0644 || true
    # The config may hold camera URLs with passwords: readable by root and the service only.
    gid=$(group_id "$NAME"); gid=${gid:-0}
    if [ -f "$CONF_DIR/agent.toml" ]; then
        same "/etc/edge-agent/agent.toml (yours: never overwritten)"
    else
        install -m 0640 -o 0 -g "$gid" "$SOURCE_TREE/deploy/agent.example.toml" "$CONF_DIR/agent.toml"
        changed "/etc/edge-agent/agent.toml (from the example: edit it)"
        CONFIG_CREATED=1
    fi
    # LoadCredential= fails the start when its file is missing; an empty one means "no password".
    if [ ! -e "$CONF_DIR/mqtt_password" ]; then
        install -m 0600 -o 0 -g 0 /dev/null "$CONF_DIR/mqtt_password"
        changed "/etc/edge-agent/mqtt_password (empty, mode 0600)"
    fi
}

# --- the venv and the package -----------------------------------------------------------
choose_python() {
    if [ -z "$PYTHON" ]; then
        if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
    fi
    if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        die "edge-agent needs Python >= 3.11 with venv (sudo apt install python3 python3-venv), or --python PATH"
    fi
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        die "$PYTHON cannot make venvs: sudo apt install python3-venv"
}

# The machine this interpreter runs wheels for, from its own ELF header: not `uname -m`, which
# names the kernel. A Pi 4/5 on 32-bit Raspberry Pi OS boots a 64-bit kernel, so uname says
# aarch64 while python3 (and every program) is 32-bit armv7l and needs armv7l wheels.
elf_machine() {  # elf_machine FILE: the wheel machine an ELF executable is built for
    local file number
    file=$(readlink -f "$1") || return 1
    [ "$(od -An -c -N4 "$file" 2>/dev/null | tr -d ' ')" = '177ELF' ] || return 1
    number=$(od -An -tu2 -j18 -N2 "$file" | tr -d ' ')  # e_machine (little-endian, as on ARM and x86)
    case "$number" in
        40) echo armv7l ;; 183) echo aarch64 ;; 62) echo x86_64 ;; 3) echo i686 ;; 243) echo riscv64 ;;
        *) echo "elf-machine-$number" ;;
    esac
}
python_machine() { elf_machine "$(command -v "$PYTHON")" || uname -m; }

# Under qemu-user (an image built in systemd-nspawn on an x86 machine with binfmt handlers) the
# ARM Python runs but /proc/cpuinfo is the host's, and LiteRT crashes when it reads it.
emulated() {
    case "$(python_machine)" in
        armv7l|aarch64) grep -qE '^(vendor_id|flags)[[:space:]]*:' /proc/cpuinfo 2>/dev/null ;;
        *) return 1 ;;
    esac
}

# Where the package comes from: PKG_KIND (wheelhouse, wheel or tree) and PKG_PATH.
choose_package() {
    if [ -n "$FROM" ]; then
        [ -e "$FROM" ] || die "--from $FROM does not exist"
        PKG_PATH=$(cd "$(dirname "$FROM")" && pwd)/$(basename "$FROM")
        case "$PKG_PATH" in
            *.whl) PKG_KIND=wheel ;;
            *) [ -f "$PKG_PATH/pyproject.toml" ] || die "--from $FROM is neither a .whl nor a source tree with pyproject.toml"
               [ -z "$WHEELHOUSE" ] || die "--wheelhouse installs wheels only: pass --from the edge-agent .whl (deploy/wheelhouse.sh puts it in the wheelhouse) or leave --from out"
               PKG_KIND=tree ;;
        esac
    elif [ -n "$WHEELHOUSE" ]; then
        PKG_KIND=wheelhouse PKG_PATH=$WHEELHOUSE
    else
        [ -f "$SOURCE_TREE/pyproject.toml" ] || die "$SOURCE_TREE has no pyproject.toml: pass --wheelhouse DIR or --from PATH"
        PKG_KIND=tree PKG_PATH=$SOURCE_TREE
    fi
}

check_wheelhouse() {
    [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE is not a directory"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    if [ -f "$WHEELHOUSE/SHA256SUMS" ]; then
        (cd "$WHEELHOUSE" && sha256sum --quiet --strict -c SHA256SUMS) >/dev/null 2>&1 ||
            die "the wheelhouse $WHEELHOUSE is damaged (SHA256SUMS does not match): copy it again"
    fi
    if [ -f "$WHEELHOUSE/manifest.txt" ]; then
        local machine version ours python_arch kernel
        machine=$(sed -n 's/^machine: //p' "$WHEELHOUSE/manifest.txt")
        version=$(sed -n 's/^python-version: //p' "$WHEELHOUSE/manifest.txt")
        if [ "$FIRST_BOOT" = 1 ]; then
            # the image's own python3 decides; its version and imports are checked at first boot
            local image_arch
            image_arch=$(elf_machine "$PREFIX/usr/bin/python3") ||
                die "$PREFIX/usr/bin/python3 is missing: --first-boot needs the image's root folder (with python3 installed)"
            [ -z "$machine" ] || [ "$machine" = "$image_arch" ] ||
                die "the wheelhouse is for $machine but the image's python3 is $image_arch: build one with deploy/wheelhouse.sh --machine $image_arch"
            return
        fi
        ours=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        python_arch=$(python_machine) kernel=$(uname -m)
        if [ -n "$machine" ] && [ "$machine" != "$python_arch" ]; then
            local why="$PYTHON is $python_arch"
            [ "$kernel" = "$python_arch" ] || why="$why (a $kernel kernel with a 32-bit userland: 32-bit Raspberry Pi OS on a Pi 4/5 boots a 64-bit kernel)"
            die "the wheelhouse is for $machine but $why: build one with deploy/wheelhouse.sh --machine $python_arch"
        fi
        [ -z "$version" ] || [ "$version" = "$ours" ] ||
            die "the wheelhouse is for Python $version but $PYTHON is $ours: build one with deploy/wheelhouse.sh --python-version $ours"
    fi
}

# A target that takes numpy, OpenCV and cffi from apt (32-bit Raspberry Pi OS: PyPI has no
# armv7l wheels of them) says so in the wheelhouse's manifest: the venv then sees system
# site-packages and pip installs exactly the wheelhouse's requirements.txt, without resolving
# dependencies it cannot satisfy from wheels.
SYSTEM_PACKAGES=
APT_MODULES=(python3-numpy:numpy python3-opencv:cv2 python3-cffi:cffi)
decide_system_packages() {
    if [ -n "$WHEELHOUSE" ] && [ -f "$WHEELHOUSE/manifest.txt" ]; then
        SYSTEM_PACKAGES=$(sed -n 's/^system-packages: *//p' "$WHEELHOUSE/manifest.txt")
    elif [ "$(python_machine)" = armv7l ]; then
        die "32-bit Python (armv7l): install from a bundle made by deploy/wheelhouse.sh --machine armv7l (PyPI has no armv7l numpy 1.x or OpenCV wheels)"
    fi
    [ -n "$SYSTEM_PACKAGES" ] || return 0
    local entry package module missing=()
    for package in $SYSTEM_PACKAGES; do
        module=$package
        for entry in "${APT_MODULES[@]}"; do [ "${entry%%:*}" != "$package" ] || module=${entry#*:}; done
        "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] || die "this board takes ${SYSTEM_PACKAGES// /, } from apt; missing: ${missing[*]}. Run: sudo apt install ${missing[*]}"
}

fingerprint() {  # a hash of everything the package install depends on
    "$PYTHON" - "$@" "$SYSTEM_SITE" <<'EOF'
import hashlib, pathlib, sys
kind, path, system_site = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3]
digest = hashlib.sha256(f"{sys.version_info[:2]} {kind} {system_site}\n".encode())
if kind == "tree":
    files = [path / "pyproject.toml", *sorted((path / "edge_agent").rglob("*"))]
else:
    files = [path] if kind == "wheel" else sorted(path.glob("*.whl"))
for file in files:
    if file.is_file() and "__pycache__" not in file.parts:
        digest.update(f"{file.relative_to(path) if kind == 'tree' else file.name}\n".encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
print(digest.hexdigest())
EOF
}

ensure_venv() {
    local flag=false
    SYSTEM_SITE=no
    # Picamera2 comes from apt (python3-picamera2, built against the system's libcamera) and
    # cannot be pip-installed: a venv that sees system site-packages is the way to reach it.
    if "$PYTHON" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("picamera2") is None)' 2>/dev/null; then
        SYSTEM_SITE=yes; flag=true
    fi
    [ -z "$SYSTEM_PACKAGES" ] || { SYSTEM_SITE=yes; flag=true; }  # numpy, OpenCV, cffi from apt
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null; then
        if grep -q "^include-system-site-packages = $flag\$" "$VENV/pyvenv.cfg"; then
            same "/opt/edge-agent/venv (system site-packages: $SYSTEM_SITE)"
        else
            sed -i "s/^include-system-site-packages = .*/include-system-site-packages = $flag/" "$VENV/pyvenv.cfg"
            changed "/opt/edge-agent/venv (system site-packages now: $SYSTEM_SITE)"
        fi
        return
    fi
    # Missing, or broken (its python was replaced by an OS upgrade): make it afresh.
    rm -rf "$VENV"
    mkdir -p "$APP_DIR"
    local opts=()
    [ "$SYSTEM_SITE" = no ] || opts+=(--system-site-packages)
    "$PYTHON" -m venv "${opts[@]}" "$VENV"
    changed "/opt/edge-agent/venv ($("$VENV/bin/python" --version), system site-packages: $SYSTEM_SITE)"
}

# The demo files (model, labels, video, ground truth) are the installed package's data: copied
# to a fixed place so configs and the README can name them whatever Python version the venv has.
install_demo_files() {
    local demo file
    demo=$("$VENV/bin/python" -I -c 'from edge_agent.data import demo_dir; print(demo_dir())') ||
        die "the installed edge-agent has no demo files (edge_agent.data): is the wheel complete?"
    [ -f "$demo/digits_int8.tflite" ] || die "the installed edge-agent lacks its demo model ($demo/digits_int8.tflite)"
    for file in "$demo"/*; do
        [ -f "$file" ] || continue  # the detector's evaluation set (a folder) is for `edge-agent evaluate`, not the board
        put_file "$file" "$APP_DIR/models/demo/$(basename "$file")" 0644 || true
    done
}

install_package() {
    local kind path wanted target
    choose_package
    kind=$PKG_KIND path=$PKG_PATH
    wanted=$(fingerprint "$kind" "$path") || die "cannot fingerprint $path"
    if [ -f "$FINGERPRINT" ] && [ "$(cat "$FINGERPRINT")" = "$wanted" ] && "$VENV/bin/edge-agent" --version >/dev/null 2>&1; then
        same "$("$VENV/bin/edge-agent" --version) in the venv"
        install_demo_files
        return 1
    fi
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input --quiet)
    [ -z "$WHEELHOUSE" ] || pip=("${pip[@]}" install --no-index --find-links "$WHEELHOUSE")
    [ -n "$WHEELHOUSE" ] || pip=("${pip[@]}" install)
    local targets=()
    case "$kind" in
        wheelhouse) target="edge-agent[tflite-runtime]" ;;
        wheel) target="${path}[tflite-runtime]" ;;
        tree)
            # Built into a wheel first, from a clean copy (pip writes build/ and *.egg-info where
            # it builds), so what is installed is exactly what a wheel from this tree holds.
            BUILD_DIR=$(mktemp -d)
            trap 'rm -rf "$BUILD_DIR"' EXIT
            mkdir "$BUILD_DIR/src"
            cp -r "$path/pyproject.toml" "$path/edge_agent" "$BUILD_DIR/src/"
            [ ! -f "$path/README.md" ] || cp "$path/README.md" "$BUILD_DIR/src/"
            find "$BUILD_DIR/src" -name __pycache__ -prune -exec rm -rf {} +
            "$VENV/bin/python" -m pip --disable-pip-version-check --no-input --quiet \
                wheel --no-deps --wheel-dir "$BUILD_DIR/dist" "$BUILD_DIR/src" ||
                die "pip could not build a wheel from $path (see above)"
            target="$(echo "$BUILD_DIR"/dist/edge_agent-*.whl)[tflite-runtime]" ;;
    esac
    # The same version number from a newer tree must still replace the installed code.
    "$VENV/bin/python" -m pip --disable-pip-version-check --quiet uninstall -y edge-agent >/dev/null 2>&1 || true
    if [ -n "$SYSTEM_PACKAGES" ]; then  # exactly the wheelhouse's list; apt provides the rest
        target=${target%\[tflite-runtime\]}
        targets=(--no-deps "$target" -r "$WHEELHOUSE/requirements.txt")
    else
        targets=("$target")
    fi
    "${pip[@]}" "${targets[@]}" || die "pip could not install $target (see above)"
    "$VENV/bin/edge-agent" --version >/dev/null || die "the venv cannot run edge-agent after installing it"
    install_demo_files
    # A real inference run: catches wheels for the wrong machine or a runtime that cannot load.
    local output
    output=$("$VENV/bin/edge-agent" inspect "$APP_DIR/models/demo/digits_int8.tflite" 2>&1) ||
        die "edge-agent cannot load the demo model with this venv:
$output"
    echo "$wanted" > "$FINGERPRINT"
    changed "$("$VENV/bin/edge-agent" --version) in the venv (from $kind $path)"
}

# --- systemd --------------------------------------------------------------------------
systemd_running() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; }
systemctl_here() { if [ -z "$PREFIX" ]; then systemctl "$@"; else systemctl --root="$ROOT" "$@"; fi; }

enable_unit() {  # enable_unit UNIT_CHANGED PACKAGE_CHANGED
    if ! command -v systemctl >/dev/null; then
        note "systemctl not found: enable $UNIT with your init system"
        return
    fi
    if systemd_running && [ "$1" = yes ]; then systemctl daemon-reload; fi
    if [ "$(systemctl_here is-enabled "$UNIT" 2>/dev/null)" = enabled ]; then
        same "$UNIT enabled"
    else
        systemctl_here enable "$UNIT" >/dev/null 2>&1 || die "systemctl could not enable $UNIT"
        changed "$UNIT enabled (starts at boot)"
    fi
    if ! systemd_running; then
        note "no running systemd here: nothing started; the service starts at the next boot"
    elif { [ "$1" = yes ] || [ "$2" = yes ]; } && systemctl is-active --quiet "$UNIT"; then
        systemctl restart "$UNIT"
        changed "$UNIT restarted with the new version"
    fi
}

# --first-boot: everything but the venv goes into the image now; the board installs the venv
# from the copied bundle when it first boots, on its own CPU (an x86 machine building the image
# would run the board's Python only under emulation, where LiteRT crashes in the check below).
stage_first_boot() {
    local bundle=$BUNDLE_COPY
    if [ -f "$bundle/wheels/SHA256SUMS" ] && cmp -s "$WHEELHOUSE/SHA256SUMS" "$bundle/wheels/SHA256SUMS" &&
        cmp -s "$SOURCE_TREE/deploy/install.sh" "$bundle/deploy/install.sh"; then
        same "/opt/edge-agent/bundle (the board installs from it at first boot)"
    else
        rm -rf "$bundle"
        mkdir -p "$bundle/deploy" "$bundle/systemd"
        cp -r "$WHEELHOUSE" "$bundle/wheels"
        cp "$SOURCE_TREE/deploy/install.sh" "$SOURCE_TREE/deploy/agent.example.toml" "$bundle/deploy/"
        cp "$SOURCE_TREE/systemd/$UNIT" "$SOURCE_TREE/systemd/$FIRSTBOOT_UNIT" "$bundle/systemd/"
        [ ! -f "$SOURCE_TREE/README.md" ] || cp "$SOURCE_TREE/README.md" "$bundle/"
        [ ! -d "$SOURCE_TREE/models" ] || cp -r "$SOURCE_TREE/models" "$bundle/"
        changed "/opt/edge-agent/bundle ($(du -sh "$bundle" | cut -f1); the board installs from it at first boot)"
    fi
    put_file "$SOURCE_TREE/systemd/$FIRSTBOOT_UNIT" "$PREFIX/etc/systemd/system/$FIRSTBOOT_UNIT" 0644 || true
    put_file "$SOURCE_TREE/systemd/$UNIT" "$UNIT_PATH" 0644 || true
    local unit
    for unit in "$FIRSTBOOT_UNIT" "$UNIT"; do
        if [ "$(systemctl --root="$ROOT" is-enabled "$unit" 2>/dev/null)" = enabled ]; then
            same "$unit enabled"
        else
            systemctl --root="$ROOT" enable "$unit" >/dev/null 2>&1 || die "systemctl --root could not enable $unit"
            changed "$unit enabled"
        fi
    done
}

do_install() {
    [ -f "$SOURCE_TREE/systemd/$UNIT" ] || die "$SOURCE_TREE/systemd/$UNIT is missing: run the install.sh of a full repository or bundle"
    if [ "$FIRST_BOOT" = 1 ]; then
        [ -f "$SOURCE_TREE/systemd/$FIRSTBOOT_UNIT" ] || die "$SOURCE_TREE/systemd/$FIRSTBOOT_UNIT is missing: use the install.sh of a full repository or bundle"
        command -v systemctl >/dev/null || die "--first-boot enables units with systemctl --root: install systemd (apt) on this machine"
        echo "preparing ${ROOT} to install edge-agent at its first boot"
        check_wheelhouse   # checksums, and the image's python3 against the bundle's machine
        ensure_accounts
        install_files
        stage_first_boot
        echo "done ($CHANGES change(s)). At its first boot the board installs the venv from /opt/edge-agent/bundle"
        echo "  (journalctl -u $FIRSTBOOT_UNIT shows it), then starts $UNIT"
        return
    fi
    echo "installing edge-agent into ${ROOT}"
    choose_python
    if emulated; then
        die "this $(python_machine) Python runs under emulation (/proc/cpuinfo is the host's x86 CPU): LiteRT crashes there. To build an SD-card image on another machine, install from outside it: sudo bash deploy/install.sh --root IMAGE_ROOT --wheelhouse DIR --first-boot"
    fi
    [ -z "$WHEELHOUSE" ] || check_wheelhouse   # before anything changes
    decide_system_packages
    ensure_accounts
    install_files
    ensure_venv
    local package_changed=no unit_changed=no
    install_package && package_changed=yes
    put_file "$SOURCE_TREE/systemd/$UNIT" "$UNIT_PATH" 0644 && unit_changed=yes
    enable_unit "$unit_changed" "$package_changed"
    if [ "$CHANGES" = 0 ]; then
        echo "nothing to change: edge-agent is installed and up to date"
    elif [ "$CONFIG_CREATED" = 1 ]; then
        echo "done ($CHANGES change(s)). Next:"
        echo "  edit /etc/edge-agent/agent.toml, then"
        echo "  sudo /opt/edge-agent/venv/bin/edge-agent check-config /etc/edge-agent/agent.toml"
        echo "  sudo systemctl start $UNIT && systemctl status $UNIT"
    else
        echo "done ($CHANGES change(s))"
    fi
}

do_uninstall() {
    echo "removing edge-agent from ${ROOT}"
    if [ -f "$UNIT_PATH" ]; then
        if systemd_running; then
            systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
        elif command -v systemctl >/dev/null; then
            systemctl_here disable "$UNIT" >/dev/null 2>&1 || true
        fi
        rm -f "$UNIT_PATH"
        systemd_running && systemctl daemon-reload
        changed "removed $UNIT"
    fi
    if [ -d "$APP_DIR" ]; then
        rm -rf "$APP_DIR"
        changed "removed /opt/edge-agent (venv, demo models)"
    fi
    if accounts_here && [ -n "$(account_line passwd "$NAME")" ]; then
        local opts
        mapfile -t opts < <(prefix_opt)
        userdel "${opts[@]}" "$NAME"
        changed "removed user $NAME"
    fi
    # userdel drops the user's own group only where login.defs says USERGROUPS_ENAB yes.
    if accounts_here && [ -n "$(account_line group "$NAME")" ] && [ -z "$(account_line group "$NAME" | cut -d: -f4)" ]; then
        local opts
        mapfile -t opts < <(prefix_opt)
        groupdel "${opts[@]}" "$NAME"
        changed "removed group $NAME"
    fi
    if [ "$PURGE" = 1 ]; then
        for dir in "$CONF_DIR" "$STATE_DIR"; do
            if [ -e "$dir" ]; then rm -rf "$dir"; changed "removed ${dir#"$PREFIX"}"; fi
        done
    else
        for dir in "$CONF_DIR" "$STATE_DIR"; do
            [ ! -e "$dir" ] || note "kept ${dir#"$PREFIX"} (--purge removes it)"
        done
    fi
    [ "$CHANGES" != 0 ] || echo "nothing to remove: edge-agent is not installed"
}

if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
