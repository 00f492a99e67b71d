"""The Coral Edge TPU: is it there, can the service reach it, and does libedgetpu suit the runtime.

Where the facts come from (the fixture trees in tests/board_fixtures copy these layouts):
- USB: /sys/bus/usb/devices/*/{idVendor,idProduct,speed,busnum,devnum} (Documentation/ABI/stable/
  sysfs-bus-usb, drivers/usb/core/sysfs.c: speed is "480" for USB 2, "5000" for USB 3). A USB
  Accelerator shows as 1a6e:089a (Global Unichip) until libedgetpu loads its firmware, then as
  18d1:9302 (Google): libedgetpu's debian/edgetpu-accelerator.rules names both, GROUP="plugdev".
- PCIe/M.2: PCI 1ac1:089a bound to the `apex` driver of gasket-dkms (google/gasket-driver,
  apex_driver.c), which makes /dev/apex_N and /sys/class/apex/apex_N/temp (millidegrees);
  gasket-dkms's udev rule gives the node GROUP="apex", MODE="0660".
- libedgetpu and its TensorFlow release: edge_agent/runtime/edgetpu.py.
"""

from __future__ import annotations

import glob
import grp
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.probe import STARTUP_ALLOWANCE_S, run_probe
from edge_agent.doctor.result import Check, fail, info, ok, problem, skip, warn
from edge_agent.doctor.system import pi_generation

AREA = "edgetpu"
USB_IDS = {("1a6e", "089a"): "not initialised yet", ("18d1", "9302"): "initialised"}
PCI_IDS = ("0x1ac1", "0x089a")
UDEV_RULE_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/lib/udev/rules.d", "/usr/lib/udev/rules.d")
USB_RULE = ('SUBSYSTEM=="usb",ATTRS{idVendor}=="1a6e",ATTRS{idProduct}=="089a",GROUP="plugdev"\n'
            'SUBSYSTEM=="usb",ATTRS{idVendor}=="18d1",ATTRS{idProduct}=="9302",GROUP="plugdev"')
DEMO_MODEL = Path(__file__).resolve().parent.parent / "data" / "demo" / "digits_int8.tflite"
DELEGATE_PROBE_S = 30.0  # creating the delegate uploads the USB Accelerator's firmware (a few seconds)
BOOKWORM_PACKAGES = ("feranick's community build for TensorFlow 2.17/2.18 (libedgetpu1-std_16.0tf2.17.1-1.bookworm_arm64.deb "
                     "from github.com/feranick/libedgetpu/releases) with the matching tflite_runtime 2.17.1 wheel "
                     "(github.com/feranick/TFlite-builds/releases): see the README's Coral section")


@dataclass(frozen=True)
class UsbCoral:
    name: str  # sysfs name, e.g. "2-1"
    vendor: str
    product: str
    speed_mbps: float
    node: Path  # /dev/bus/usb/BBB/DDD under the root


@dataclass(frozen=True)
class PciCoral:
    address: str  # 0000:01:00.0
    driver: str   # "apex", or "" when no driver is bound


def usb_corals(ctx: DoctorContext) -> list[UsbCoral]:
    found = []
    for folder in sorted(glob.glob(str(ctx.path("/sys/bus/usb/devices/*")))):
        rel = "/sys/bus/usb/devices/" + os.path.basename(folder)
        vendor = (ctx.read_text(rel + "/idVendor") or "").strip().lower()
        product = (ctx.read_text(rel + "/idProduct") or "").strip().lower()
        if (vendor, product) not in USB_IDS:
            continue
        try:
            speed = float((ctx.read_text(rel + "/speed") or "0").strip())
        except ValueError:
            speed = 0.0
        bus, dev = ((ctx.read_text(rel + f"/{f}") or "0").strip() for f in ("busnum", "devnum"))
        node = ctx.path(f"/dev/bus/usb/{int(bus or 0):03d}/{int(dev or 0):03d}")
        found.append(UsbCoral(os.path.basename(folder), vendor, product, speed, node))
    return found


def pci_corals(ctx: DoctorContext) -> list[PciCoral]:
    found = []
    for folder in sorted(glob.glob(str(ctx.path("/sys/bus/pci/devices/*")))):
        rel = "/sys/bus/pci/devices/" + os.path.basename(folder)
        ids = tuple((ctx.read_text(rel + f"/{f}") or "").strip().lower() for f in ("vendor", "device"))
        if ids != PCI_IDS:
            continue
        driver_link = Path(folder) / "driver"
        driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else ""
        found.append(PciCoral(os.path.basename(folder), driver))
    return found


def apex_nodes(ctx: DoctorContext) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(ctx.path("/dev/apex_*"))))]


def wanted_buses(ctx: DoctorContext) -> set[str]:
    """{"usb", "pci"} the config's Edge TPU pipelines accept (edgetpu_device "" accepts both)."""
    buses = set()
    for pipeline in ctx.edgetpu_pipelines():
        device = pipeline.delegate.device
        buses |= {"usb", "pci"} if not device else {device.split(":")[0]}
    return buses


def node_group(ctx: DoctorContext, node: Path) -> tuple[str, int]:
    """(group name as the root's /etc/group says, permission bits) of a device node."""
    try:
        st = node.stat()
    except OSError:
        return "", 0
    name = group_name(ctx, st.st_gid)
    return name, stat.S_IMODE(st.st_mode)


def group_name(ctx: DoctorContext, gid: int) -> str:
    for line in (ctx.read_text("/etc/group") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2] == str(gid):
            return parts[0]
    if ctx.live:
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            pass
    return str(gid)


def udev_rules_mentioning(ctx: DoctorContext, *needles: str) -> list[str]:
    """Rule files (under the root) whose text contains every needle."""
    found = []
    for folder in UDEV_RULE_DIRS:
        for path in sorted(glob.glob(str(ctx.path(folder) / "*.rules"))):
            text = ctx.read_text(folder + "/" + os.path.basename(path)) or ""
            if all(n in text for n in needles):
                found.append(f"{folder}/{os.path.basename(path)}")
    return found


def check_edgetpu(ctx: DoctorContext) -> list[Check]:
    needed = bool(ctx.edgetpu_pipelines())
    buses = wanted_buses(ctx) if needed else set()
    usb, pci, nodes = usb_corals(ctx), pci_corals(ctx), apex_nodes(ctx)
    checks: list[Check] = []
    checks += _usb_checks(ctx, usb, "usb" in buses and not (pci and "pci" in buses))
    checks += _pci_checks(ctx, pci, nodes, "pci" in buses and not (usb and "usb" in buses))
    if needed and not usb and not pci and not nodes:
        checks.append(fail(AREA, "device", "the config uses the Edge TPU, but no Coral is on USB or PCIe",
                           "plug the USB Accelerator into a USB 3 port (lsusb shows 1a6e:089a or 18d1:9302), or for an "
                           "M.2/PCIe Coral install gasket-dkms and check `lspci -nn | grep 1ac1`"))
    if not needed and not usb and not pci and not nodes:
        checks.append(info(AREA, "device", "no Coral found (the config does not use the Edge TPU)"))
        return checks
    checks += _library_checks(ctx, needed)
    return checks


def _usb_checks(ctx: DoctorContext, corals: list[UsbCoral], needed: bool) -> list[Check]:
    checks = []
    for coral in corals:
        state = USB_IDS[(coral.vendor, coral.product)]
        where = f"Coral USB Accelerator at {coral.name} ({coral.vendor}:{coral.product}, {state})"
        details = {"sysfs": coral.name, "id": f"{coral.vendor}:{coral.product}", "speed_mbps": coral.speed_mbps}
        if coral.speed_mbps >= 5000:
            checks.append(ok(AREA, "usb", f"{where} on USB 3 ({coral.speed_mbps:g} Mbit/s)", **details))
        elif coral.speed_mbps > 0:
            checks.append(warn(AREA, "usb", f"{where} on a USB 2 port ({coral.speed_mbps:g} Mbit/s): it works, but every "
                                            "inference moves its data at USB 2 speed, several times slower than on USB 3",
                               "plug it into a USB 3 (blue) port with a short cable, or a powered USB 3 hub", **details))
        else:
            checks.append(info(AREA, "usb", f"{where}, speed unknown", **details))
        if coral.vendor == "1a6e":
            checks.append(info(AREA, "usb-init", "1a6e:089a is the Coral before its first use; it re-enumerates as "
                                                 "18d1:9302 once libedgetpu loads its firmware. If it stays 1a6e:089a after "
                                                 "the agent started, it did not initialise: power (it draws up to 900 mA: "
                                                 "use another port or a powered hub) or the cable"))
        group, mode = node_group(ctx, coral.node)
        if not group:
            checks.append(skip(AREA, "usb-access", f"no device node {coral.node} to check its permissions"))
        elif group == "plugdev" and mode & 0o060 == 0o060:
            checks.append(ok(AREA, "usb-access", f"{coral.node} is group plugdev, mode {mode:o}"))
        else:
            rules = udev_rules_mentioning(ctx, "18d1")
            checks.append(problem(AREA, "usb-access", needed, f"{coral.node} is group {group}, mode {mode:o}: only root can "
                                  "use the Coral" + ("" if rules else " (no udev rule for 18d1/1a6e is installed)"),
                                  "install libedgetpu1-std (its 60-libedgetpu1-std.rules sets GROUP=\"plugdev\"), or put "
                                  f"these two lines in /etc/udev/rules.d/60-edgetpu.rules: {USB_RULE.replace(chr(10), ' ')}; "
                                  "then sudo udevadm control --reload && sudo udevadm trigger, and replug",
                                  rules=rules))
    return checks


def _pci_checks(ctx: DoctorContext, corals: list[PciCoral], nodes: list[Path], needed: bool) -> list[Check]:
    checks = []
    modules = {m: ctx.path(f"/sys/module/{m}").is_dir() for m in ("gasket", "apex")}
    for coral in corals:
        if coral.driver == "apex" and nodes:
            temp = (ctx.read_text(f"/sys/class/apex/{nodes[0].name}/temp") or "").strip()
            hot = f", {int(temp) / 1000:.1f} °C" if temp.lstrip("-").isdigit() else ""
            checks.append(ok(AREA, "pcie", f"PCIe Coral at {coral.address}, driver apex, {', '.join(n.name for n in nodes)}{hot}",
                             address=coral.address, nodes=[str(n) for n in nodes], modules=modules))
        else:
            missing = [m for m, loaded in modules.items() if not loaded]
            checks.append(problem(AREA, "pcie", needed, f"PCIe Coral at {coral.address} (1ac1:089a) has no driver"
                                  + (f" (module {' and '.join(missing)} not loaded)" if missing else "") + ", so there is no /dev/apex_0",
                                  "install the gasket driver (gasket-dkms; for current kernels build it from "
                                  "google/gasket-driver, e.g. with jnicolson/gasket-builder), then reboot",
                                  address=coral.address, modules=modules))
    for node in nodes:
        group, mode = node_group(ctx, node)
        if group == "root" and not mode & 0o006:
            checks.append(problem(AREA, "pcie-access", needed, f"{node} is root-only (group root, mode {mode:o})",
                                  "add the udev rule SUBSYSTEM==\"apex\", MODE=\"0660\", GROUP=\"apex\" (/etc/udev/rules.d/65-apex.rules), "
                                  "sudo groupadd apex, reboot"))
    generation = pi_generation(ctx)
    if generation == 5 and (corals or needed and "pci" in wanted_buses(ctx)):
        checks += _pi5_pcie(ctx, bool(nodes))
    return checks


def _pi5_pcie(ctx: DoctorContext, working: bool) -> list[Check]:
    """The Pi 5's settings for an M.2 Coral (config.txt, and the 4 KiB-page kernel gasket needs)."""
    config = ctx.read_text("/boot/firmware/config.txt") or ctx.read_text("/boot/config.txt") or ""
    lines = {line.split("#")[0].strip() for line in config.splitlines()}
    missing = [line for line in ("dtparam=pciex1", "kernel=kernel8.img") if line not in lines]
    if not any(line.startswith("dtoverlay=pciex1-compat-pi5") for line in lines):
        missing.append("dtoverlay=pciex1-compat-pi5,no-mip")
    page = os.sysconf("SC_PAGE_SIZE") if ctx.live else 0
    if page and page != 4096:
        missing.append(f"(this kernel uses {page // 1024} KiB pages: gasket needs the 4 KiB kernel, kernel=kernel8.img)")
    if not missing:
        return [ok(AREA, "pi5-pcie", "Pi 5 PCIe settings for the Coral are in config.txt")]
    return [problem(AREA, "pi5-pcie", not working, "Pi 5: config.txt lacks what an M.2 Coral needs: " + ", ".join(missing),
                    "add to /boot/firmware/config.txt under [all]: dtparam=pciex1, dtoverlay=pciex1-compat-pi5,no-mip, "
                    "kernel=kernel8.img (and dtoverlay=pcie-32bit-dma-pi5 if it is still not found), then reboot")]


def _library_checks(ctx: DoctorContext, needed: bool) -> list[Check]:
    from edge_agent.runtime.backends import available_runtimes
    from edge_agent.runtime.edgetpu import choose_edgetpu_runtime, find_edgetpu_library, runtime_tf_version, same_release

    library = find_edgetpu_library(ctx.root, ctx.env.get("LD_LIBRARY_PATH", ""))
    if library is None:
        return [problem(AREA, "library", needed, "libedgetpu.so.1 is not installed",
                        f"install the Edge TPU runtime: on Debian 12 / Raspberry Pi OS bookworm, {BOOKWORM_PACKAGES}")]
    checks = [info(AREA, "library", f"libedgetpu: {library.describe()}", path=library.path, package=library.package,
                   version=library.version, tf_version=library.tf_version)]
    available = available_runtimes()
    if not available:
        return checks  # packages.py says no runtime imports
    versions = {name: runtime_tf_version(name) for name in available}
    configured = {p.runtime for p in ctx.edgetpu_pipelines()} or {"auto"}
    chosen, why = choose_edgetpu_runtime(available, library, versions)
    targets = sorted({chosen if r == "auto" else r for r in configured if r == "auto" or r in available})
    for runtime in targets:
        label = f"{runtime} {versions.get(runtime) or '(TensorFlow version unknown)'}"
        if library.tf_version and versions.get(runtime) and not same_release(library.tf_version, versions[runtime]):
            checks.append(warn(AREA, f"match-{runtime}", f"libedgetpu is built from TensorFlow {library.tf_version} but {label} "
                               f"is from TensorFlow {versions[runtime]}: a mismatch can crash the interpreter",
                               f"install the libedgetpu and runtime of one TensorFlow release: {BOOKWORM_PACKAGES}"))
        elif not library.tf_version:
            checks.append(warn(AREA, f"match-{runtime}", f"libedgetpu's TensorFlow version is unknown ({library.path} is not "
                               f"from a libedgetpu1 package), so its pairing with {label} is not known",
                               f"install it as a package: {BOOKWORM_PACKAGES}"))
        elif not versions.get(runtime):
            checks.append(warn(AREA, f"match-{runtime}", f"{runtime} does not say which TensorFlow release it was built "
                               f"from, so its pairing with libedgetpu (TensorFlow {library.tf_version}) is not known",
                               "the load check below says whether they work together"))
        else:
            checks.append(ok(AREA, f"match-{runtime}", f"libedgetpu and {label} are from the same TensorFlow release"))
        checks.append(_load_check(ctx, runtime, library.path, needed))
    if "auto" in configured:
        checks.append(info(AREA, "runtime", f"runtime = \"auto\" with the Edge TPU uses {chosen}: {why}", runtime=chosen))
    return checks


def _load_check(ctx: DoctorContext, runtime: str, library: str, needed: bool) -> Check:
    devices = {p.delegate.device for p in ctx.edgetpu_pipelines()} or {""}
    device = sorted(devices)[0]
    request = {"probe": "delegate", "runtime": runtime, "library": "" if ctx.live else library,
               "device": device, "model": str(DEMO_MODEL)}
    result = run_probe(request, DELEGATE_PROBE_S + STARTUP_ALLOWANCE_S, env=ctx.env)
    name = f"load-{runtime}"
    if result.status == "ok":
        return ok(AREA, name, f"libedgetpu loads with {runtime} and a model runs through it ({result.seconds:.1f} s)")
    if result.status == "crashed":
        return problem(AREA, name, needed, f"libedgetpu crashed the {runtime} interpreter ({result.signal_name}): the "
                       "library and the runtime are from different TensorFlow releases",
                       f"install the libedgetpu and runtime of one TensorFlow release: {BOOKWORM_PACKAGES}")
    if result.status == "unavailable":
        return skip(AREA, name, f"not tried: {result.error}")
    error = result.error.split(". Fix:")[0]  # the delegate error's own fix is the generic one
    if any(text in error for text in ("file too short", "invalid ELF header", "wrong ELF class", "cannot open shared object")):
        return problem(AREA, name, needed, f"{library} is not a library this machine can load ({error.rsplit(': ', 1)[-1]})",
                       f"install the libedgetpu package built for this CPU: {BOOKWORM_PACKAGES}")
    hint = ("the Coral is missing, in use by another process (is the edge-agent service running?), or the user "
            "cannot open it (see usb-access/pcie-access)")
    return problem(AREA, name, needed, f"libedgetpu does not load with {runtime}: {error}", hint)
