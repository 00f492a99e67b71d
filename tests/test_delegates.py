"""A real external delegate (tests/delegate/fake_delegate.c, built here with the system compiler)
through both runtimes' load_delegate: it loads, the model runs through it (a SOFTMAX it claims and
computes), its failures are clear errors, and under the Edge TPU's soname `delegate = "edgetpu"`
loads it with LiteRT as well as tflite-runtime in the real agent."""

from __future__ import annotations

import gc
import json
import logging

import numpy as np
import pytest

from fake_delegate import build_fake_delegate, compiler
from support import DEMO_MODEL, DEMO_TRUTH, DEMO_VIDEO, RUNTIMES
from test_runtime import accuracy, dequantized, run_demo_video
from edge_agent.config import DelegateSpec
from edge_agent.runtime import DelegateError, load_model
from edge_agent.service.active_model import WARMUP_INVOKES
from edge_agent.runtime.edgetpu import EdgeTpuLibrary, choose_edgetpu_runtime, find_edgetpu_library

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C compiler to build the test delegate")
FRAMES = 60
INT8_STEP = 1 / 256


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return build_fake_delegate(tmp_path_factory.mktemp("delegate"))


@pytest.fixture(scope="module")
def frames():
    """The demo video's first frames (the same video test_runtime reads in full)."""
    import cv2

    capture = cv2.VideoCapture(str(DEMO_VIDEO))
    out = []
    while len(out) < FRAMES:
        ok, frame = capture.read()
        assert ok
        out.append(frame.copy())
    capture.release()
    return out


def external(fake, **options) -> DelegateSpec:
    return DelegateSpec(kind="external", path=str(fake.path), options=options)


@pytest.fixture(scope="module")
def cpu_outputs(frames):
    return {runtime: run_demo_video(load_model(DEMO_MODEL, runtime=runtime), frames) for runtime in RUNTIMES}


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_delegate_that_claims_nothing_loads_and_leaves_the_results_alone(runtime, fake, frames, cpu_outputs):
    lib = fake.library()
    created = lib.fake_delegate_created()
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=external(fake, claim="none"), on_delegate_failure="fail")
    assert model.delegate == f"external:{fake.path}" and model.runtime == runtime
    assert lib.fake_delegate_created() == created + 1 and lib.fake_delegate_claimed() == 0
    assert lib.fake_delegate_options() == b"claim=none;"
    outputs = run_demo_video(model, frames)
    np.testing.assert_array_equal(outputs, cpu_outputs[runtime])
    destroyed = lib.fake_delegate_destroyed()
    del model
    gc.collect()
    assert lib.fake_delegate_destroyed() == destroyed + 1, "the runtime hands the delegate back to tflite_plugin_destroy_delegate"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_the_model_runs_through_the_delegate_s_own_softmax(runtime, fake, frames, cpu_outputs):
    lib = fake.library()
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=external(fake, claim="SOFTMAX"), on_delegate_failure="fail")
    assert lib.fake_delegate_claimed() == 1, "the demo model has one SOFTMAX"
    before = lib.fake_delegate_invocations()
    outputs = run_demo_video(model, frames)
    assert lib.fake_delegate_invocations() - before == FRAMES, "every invoke ran the delegate's kernel"
    # computed in float and requantised: at most one int8 step from the runtime's own kernel
    difference = np.abs(dequantized(model, outputs) - dequantized(model, cpu_outputs[runtime]))
    assert difference.max() <= INT8_STEP + 1e-9
    assert np.mean(outputs.argmax(axis=1) == cpu_outputs[runtime].argmax(axis=1)) >= 0.98
    right = np.mean([str(top) == truth for top, truth in zip(outputs.argmax(axis=1), DEMO_TRUTH)])
    assert right >= 0.9


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_what_the_delegate_computes_is_what_the_model_outputs(runtime, fake, frames):
    """mode=corrupt writes a uniform softmax: the outputs follow, so the runtime did use the kernel."""
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=external(fake, claim="SOFTMAX", mode="corrupt"), on_delegate_failure="fail")
    outputs = dequantized(model, run_demo_video(model, frames[:10]))
    np.testing.assert_allclose(outputs, 0.1, atol=INT8_STEP)
    assert accuracy(run_demo_video(model, frames[:10])) < 0.5


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_delegate_that_refuses_to_start_is_a_delegate_error_with_its_reason(runtime, fake, caplog):
    spec = external(fake, fail="create")
    with pytest.raises(DelegateError) as info:
        load_model(DEMO_MODEL, runtime=runtime, delegate=spec, on_delegate_failure="fail")
    message = str(info.value)
    assert str(fake.path) in message and "Fix:" in message
    caplog.set_level(logging.WARNING, logger="edge_agent")
    model = load_model(DEMO_MODEL, runtime=runtime, delegate=spec, on_delegate_failure="cpu")
    assert model.delegate == "none"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_auto_with_the_edge_tpu_picks_the_runtime_built_from_libedgetpu_s_release():
    versions = {"litert": "2.22.0", "tflite-runtime": "2.14.0"}
    both = ["litert", "tflite-runtime"]
    assert choose_edgetpu_runtime(both, EdgeTpuLibrary("/l", "libedgetpu1-std", "16.0tf2.14.1-1", "2.14.1"), versions)[0] == "tflite-runtime"
    assert choose_edgetpu_runtime(both, EdgeTpuLibrary("/l", "libedgetpu1-std", "16.0tf2.22.0-1", "2.22.0"), versions)[0] == "litert"
    name, why = choose_edgetpu_runtime(both, EdgeTpuLibrary("/l", "libedgetpu1-std", "16.0", "2.5.0"), versions)
    assert name == "tflite-runtime" and "no installed runtime matches it" in why and "TensorFlow 2.5.0" in why
    assert choose_edgetpu_runtime(["litert"], None, versions)[0] == "litert"


def run_agent_with_edgetpu(fake, tmp_path, agent_process, runtime: str) -> tuple[list[dict], list[str], str]:
    log = tmp_path / f"delegate-{runtime}.log"
    config = tmp_path / f"agent-{runtime}.toml"
    config.write_text(f'state_dir = "{tmp_path}/state"\nlog_level = "info"\n[mqtt]\nenabled = false\n'
                      f'[pipelines.main]\nsource = "{DEMO_VIDEO}"\nmodel = "{DEMO_MODEL}"\nruntime = "{runtime}"\n'
                      f'delegate = "edgetpu"\nedgetpu_device = "usb:0"\non_delegate_failure = "fail"\nmax_frames = 50\n'
                      'sinks = ["stdout"]\n')
    agent = agent_process("run", "--config", str(config), env={
        "LD_LIBRARY_PATH": str(fake.edgetpu_dir), "FAKE_DELEGATE_CLAIM": "SOFTMAX", "FAKE_DELEGATE_LOG": str(log)})
    assert agent.wait(120) == 0, agent.stderr
    predictions = [json.loads(line) for line in agent.stdout.splitlines()]
    return predictions, log.read_text().splitlines(), agent.stderr


@pytest.mark.parametrize("runtime", [*RUNTIMES, "auto"])
def test_delegate_edgetpu_loads_libedgetpu_with_either_runtime_and_runs_the_demo(runtime, fake, tmp_path, agent_process):
    predictions, log, stderr = run_agent_with_edgetpu(fake, tmp_path, agent_process, runtime)
    assert len(predictions) == 50
    right = sum(p["classes"][0]["label"] == truth for p, truth in zip(predictions, DEMO_TRUTH))
    assert right >= 45, f"{right}/50 right through the Edge TPU path"
    assert log[0] == "create device=usb:0;", "the device string reached libedgetpu's create"
    # every frame went through it, after the pipeline's warm-up invokes
    assert log[-1] == f"destroy invocations={50 + WARMUP_INVOKES} claimed=1", log
    if runtime == "auto":  # no dpkg record for the fake: the TensorFlow version is unknown
        assert 'Edge TPU with runtime = "auto"' in stderr and "using tflite-runtime" in stderr


def test_find_edgetpu_library_follows_ld_library_path_first(fake, tmp_path):
    library = find_edgetpu_library(tmp_path, ld_library_path=str(fake.edgetpu_dir))
    assert library == EdgeTpuLibrary(str(fake.edgetpu_path)), "a library copied by hand has no package"
    assert "not from a Debian package" in library.describe() and "TensorFlow version unknown" in library.describe()
    assert find_edgetpu_library(tmp_path, ld_library_path="") is None
