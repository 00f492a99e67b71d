"""numpy, OpenCV, LiteRT, tflite-runtime and Picamera2: which are installed, whether they import
together, and the pairings known to break.

Known to break (measured or published):
- tflite-runtime 2.14 (the last on PyPI) was built against numpy 1: under numpy 2 it cannot import.
- opencv-python(-headless) >= 4.12 requires numpy >= 2; Raspberry Pi OS's python3-picamera2 (apt)
  and its compiled companions (simplejpeg, python3-av) are built for Debian's numpy 1.24, so a
  venv with system site-packages that pip-installed numpy 2 breaks `import picamera2`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # not a dependency of ours; pip carries a copy
    try:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    except ImportError:
        Requirement = None  # type: ignore[assignment,misc]

from edge_agent.doctor.context import DoctorContext
from edge_agent.doctor.probe import STARTUP_ALLOWANCE_S, run_probe
from edge_agent.doctor.result import Check, fail, info, ok, problem, skip

DEMO_MODEL = Path(__file__).resolve().parent.parent / "data" / "demo" / "digits_int8.tflite"

AREA = "packages"
OPENCV_DISTRIBUTIONS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")
RUNTIME_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
RUNTIME_DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime"}


def distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def needed_runtimes(ctx: DoctorContext) -> set[str]:
    """Runtimes the config names explicitly ("auto" needs any one)."""
    return {p.runtime for p in ctx.pipelines if p.runtime != "auto"}


def opencv_numpy_requirement(distribution: str) -> str:
    """The numpy requirement an OpenCV wheel declares ("numpy>=2; ..." for 4.12+), or ""."""
    if Requirement is None:
        return ""
    for line in importlib.metadata.requires(distribution) or []:
        try:
            requirement = Requirement(line)
        except ValueError:  # InvalidRequirement is a ValueError
            continue
        if requirement.name == "numpy" and (requirement.marker is None or requirement.marker.evaluate()):
            return ",".join(sorted(str(s) for s in requirement.specifier))  # ">=2,<2.3.0"
    return ""


def needs_numpy2(specifier: str) -> bool:
    """True when a numpy requirement ("<2.3.0,>=2") excludes every numpy 1."""
    for part in specifier.split(","):
        for operator in (">=", "==", "~=", ">"):
            if part.startswith(operator):
                return major(part[len(operator):]) >= 2
    return False


def check_packages(ctx: DoctorContext) -> list[Check]:
    numpy_version = distribution_version("numpy")
    opencv = {name: distribution_version(name) for name in OPENCV_DISTRIBUTIONS if distribution_version(name)}
    runtimes = {name: distribution_version(dist) for name, dist in RUNTIME_DISTRIBUTIONS.items()}
    picamera_spec = importlib.util.find_spec("picamera2")
    modules = ["numpy", "cv2", *RUNTIME_MODULES.values()] + (["picamera2"] if picamera_spec else [])
    probe = run_probe({"probe": "imports", "modules": modules, "runtimes": list(RUNTIME_MODULES.values()),
                       "model": str(DEMO_MODEL)}, ctx.timeout_s + STARTUP_ALLOWANCE_S + 20, env=ctx.env)
    imported = probe.data.get("modules", {}) if probe.status == "ok" else {}

    cv2_spec = importlib.util.find_spec("cv2")
    cv2_file = imported.get("cv2", {}).get("file", "") or (cv2_spec.origin or "" if cv2_spec else "")
    opencv_text = ", ".join(f"{n} {v}" for n, v in opencv.items()) or (
        f"Debian's python3-opencv {imported.get('cv2', {}).get('version', '')}".rstrip() if "/dist-packages/" in cv2_file
        else "none")
    versions = {"numpy": numpy_version, "opencv": opencv, "litert": runtimes["litert"],
                "tflite_runtime": runtimes["tflite-runtime"], "picamera2": distribution_version("picamera2") or bool(picamera_spec)}
    checks = [info(AREA, "versions", f"numpy {numpy_version or 'none'}; OpenCV: {opencv_text}; LiteRT "
                                     f"{runtimes['litert'] or 'none'}; tflite-runtime {runtimes['tflite-runtime'] or 'none'}; "
                                     f"Picamera2 {'yes' if picamera_spec else 'no'}", **versions)]
    if probe.status != "ok":
        checks.append(skip(AREA, "imports", f"could not try the imports in a child process: {probe.error}"))
        return checks

    wanted = needed_runtimes(ctx)
    for module in ("numpy", "cv2"):
        result = imported.get(module, {})
        if not result.get("ok"):
            checks.append(fail(AREA, f"import-{module}", f"`import {module}` fails: {result.get('error', probe.error)}",
                               "reinstall the agent's venv (deploy/install.sh), or `pip install -r` the wheelhouse again"))
    working = []
    for name, module in RUNTIME_MODULES.items():
        result = imported.get(module, {})
        if result.get("ok"):
            working.append(name)
        elif runtimes[name]:  # installed, but does not import
            hint = (" (tflite-runtime 2.14 is built for numpy 1: keep numpy < 2, as pyproject.toml pins)"
                    if name == "tflite-runtime" and major(numpy_version) >= 2 else "")
            checks.append(problem(AREA, f"import-{name}", name in wanted,
                                  f"{name} {runtimes[name]} is installed but does not work: {result.get('error')}{hint}",
                                  "pip install 'numpy<2' in the agent's venv" if hint else f"reinstall {name} for this CPU and Python"))
        elif name in wanted:
            checks.append(fail(AREA, f"import-{name}", f"the config uses runtime = \"{name}\", which is not installed",
                               f"install it in the agent's venv (pip install {RUNTIME_DISTRIBUTIONS[name]}), or use runtime = \"auto\""))
    if working:
        checks.append(ok(AREA, "runtimes", f"runtimes that import: {', '.join(working)}", runtimes=working))
    else:
        checks.append(fail(AREA, "runtimes", "no TFLite runtime imports", "pip install ai-edge-litert (64-bit) or "
                           "tflite-runtime==2.14.0 'numpy<2' (32-bit, Coral) in the agent's venv", runtimes=[]))

    if runtimes["tflite-runtime"] and major(numpy_version) >= 2:
        checks.append(problem(AREA, "numpy2-tflite-runtime", "tflite-runtime" in wanted or bool(ctx.edgetpu_pipelines()),
                              f"numpy {numpy_version} with tflite-runtime {runtimes['tflite-runtime']}: tflite-runtime 2.14 "
                              "cannot run under numpy 2", "pip install 'numpy>=1.26,<2' in the agent's venv"))
    if len(opencv) > 1:
        checks.append(problem(AREA, "opencv-twice", False, f"{len(opencv)} OpenCV distributions share one cv2 folder: "
                              f"{', '.join(opencv)}", f"pip uninstall {' '.join(n for n in opencv if n != 'opencv-python-headless')}"))
    if picamera_spec:
        checks.extend(_picamera_numpy(ctx, numpy_version, opencv, imported.get("picamera2", {}), Path(picamera_spec.origin or "")))
    return checks


def _picamera_numpy(ctx: DoctorContext, numpy_version: str, opencv: dict[str, str], result: dict,
                    origin: Path) -> list[Check]:
    uses_picamera = any(p.source.uri.startswith("picamera") or p.source.kind == "picamera2" for p in ctx.pipelines)
    from_apt = "/dist-packages/" in str(origin)
    if result.get("ok"):
        return [ok(AREA, "picamera2", f"Picamera2 imports ({origin.parent})")]
    cause = ""
    if from_apt and major(numpy_version) >= 2:
        pulled_by = [f"{n} {v} (requires numpy{opencv_numpy_requirement(n)})" for n, v in opencv.items()
                     if needs_numpy2(opencv_numpy_requirement(n))]
        cause = (f": Raspberry Pi OS's python3-picamera2 is built for Debian's numpy 1, and this venv has numpy "
                 f"{numpy_version}" + (f", pulled in by {', '.join(pulled_by)}" if pulled_by else ""))
    return [problem(AREA, "picamera2", uses_picamera, f"Picamera2 does not import: {result.get('error')}{cause}",
                    "keep numpy < 2 and opencv-python-headless 4.11.0.86 in the venv (what edge-agent pins): "
                    "pip install 'numpy<2' opencv-python-headless==4.11.0.86" if cause else
                    "sudo apt install --reinstall python3-picamera2")]
