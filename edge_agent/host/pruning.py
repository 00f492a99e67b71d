"""Magnitude pruning with fine-tuning (tensorflow-model-optimization), before any quantisation.

tfmot works on Keras 2 models, so the model is brought into tf-keras (2.19, the Keras 2
that matches TensorFlow 2.19): an .h5 that tf-keras can read is loaded as it is; any
other Keras model (Keras 3 .keras / .h5) is loaded with Keras 3 and rebuilt layer by layer
in tf-keras from its config, with its weights copied over. That covers Sequential and
functional models of built-in layers; custom layers and subclassed models are refused
(prune those in tf-keras yourself and convert the stripped result).

The schedule is tfmot's PolynomialDecay from 0 to the target sparsity over the first 70 %
of the fine-tuning steps; the remaining steps train at the target. `strip_pruning` then
leaves plain layers whose pruned weights are exact zeros, which the converter keeps.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import PreprocessOptions
from edge_agent.samples import Progress, SampleError, SampleSet, float_input_spec
from edge_agent.host.source_model import SourceModel, SourceModelError, first_line, tensor_name
from edge_agent.host.tensorflow_loader import import_host_library, import_keras, import_tensorflow

logger = logging.getLogger(__name__)

PURPOSE = "--prune"
PRUNABLE_KINDS = ("keras", "h5")
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
SCHEDULE_FRACTION = 0.7  # of the fine-tuning steps spent raising the sparsity
UPDATES_PER_EPOCH = 4
SEED = 0


class PruningError(SourceModelError):
    """The model or the fine-tuning data cannot be pruned as asked."""


@dataclass(frozen=True)
class PruneResult:
    function: Any  # batch-1 concrete function of the stripped, pruned model
    model: Any  # that model (the function holds its variables weakly)
    target_sparsity: float
    epochs: int
    samples: int
    steps: int
    route: str  # how the model reached tf-keras

    def to_dict(self) -> dict:
        return {"target_sparsity": self.target_sparsity, "epochs": self.epochs, "fine_tune_samples": self.samples,
                "steps": self.steps, "route": self.route}


def check_prune_request(sparsity: float, source_kind: str | None, epochs: int) -> None:
    if not 0.0 < sparsity < 1.0:
        raise PruningError(f"--prune {sparsity}: the sparsity is the fraction of weights set to zero and must be "
                           "between 0 and 1 (exclusive), e.g. 0.5")
    if epochs < 1:
        raise PruningError(f"--fine-tune-epochs must be at least 1, got {epochs}")
    if source_kind is not None and source_kind not in PRUNABLE_KINDS:
        raise PruningError(
            f"--prune works on Keras models (.keras or .h5) and this source is a {source_kind.replace('_', ' ')}: "
            "prune the Keras model it was made from, or convert without --prune")


def prune_model(source: SourceModel, sparsity: float, fine_tune: SampleSet, epochs: int,
                options: PreprocessOptions, progress: Progress | None = None) -> PruneResult:
    """Prune `source` (a Keras model) to `sparsity`, fine-tuning on `fine_tune`; the stripped model's function."""
    check_prune_request(sparsity, source.kind, epochs)
    tf = import_tensorflow()
    tf_keras = import_host_library("tf_keras", PURPOSE)
    tfmot = import_host_library("tensorflow_model_optimization", PURPOSE)
    model, route = _load_in_tf_keras(source.path, tf_keras)
    x, y = _training_arrays(source, model, fine_tune, options)
    probabilities = _outputs_probabilities(model, x[:16])
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    steps = steps_per_epoch * epochs
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0,
        end_step=max(1, int(steps * SCHEDULE_FRACTION)), frequency=max(1, steps_per_epoch // UPDATES_PER_EPOCH))
    tf_keras.utils.set_random_seed(SEED)
    try:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    except (ValueError, TypeError) as err:  # a layer tfmot cannot wrap
        raise PruningError(f"tfmot cannot prune {source.path}: {first_line(err)}") from None
    pruned.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE),
                   loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities))
    callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
    if progress:
        callbacks.append(tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress(epoch + 1, epochs)))
    logger.info("pruning %s to %.0f %% sparsity: %d epochs on %d samples (%d steps)", source.path, sparsity * 100,
                epochs, len(x), steps)
    pruned.fit(x, y, epochs=epochs, batch_size=BATCH_SIZE, shuffle=True, verbose=0, callbacks=callbacks)
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    spec = tf.TensorSpec(source.input.shape, tf.float32, name=tensor_name(source.input.name))

    @tf.autograph.experimental.do_not_convert
    def serve(image):
        return {"output_0": stripped(image, training=False)}

    function = tf.function(serve, input_signature=[spec]).get_concrete_function()
    return PruneResult(function, stripped, float(sparsity), epochs, len(x), steps, route)


def _load_in_tf_keras(path: Path, tf_keras: Any) -> tuple[Any, str]:
    if path.suffix.lower() in (".h5", ".hdf5"):
        try:
            return tf_keras.models.load_model(path, compile=False), "tf-keras loaded the .h5 as it is"
        except Exception as err:  # a Keras 3 .h5 has a config tf-keras does not read
            logger.debug("tf-keras cannot load %s directly (%s): rebuilding it from Keras 3", path, first_line(err))
    keras = import_keras()
    original = keras.models.load_model(path, compile=False)
    try:
        rebuilt = rebuild_in_tf_keras(original, keras, tf_keras)
    except PruningError:
        raise
    except Exception as err:  # unknown layer classes or config keys
        raise PruningError(
            f"{path} cannot be rebuilt in tf-keras for pruning ({type(err).__name__}: {first_line(err)}): --prune "
            "supports Sequential and functional models of built-in layers; prune a custom model in tf-keras with "
            "tfmot yourself and convert the stripped model") from None
    return rebuilt, "Keras 3 model rebuilt in tf-keras from its config, weights copied"


def rebuild_in_tf_keras(original: Any, keras: Any, tf_keras: Any) -> Any:
    """The same architecture and weights as a tf-keras model (Sequential or functional, built-in layers only)."""
    if isinstance(original, keras.Sequential):
        layers = [_tf_keras_layer(layer, tf_keras) for layer in original.layers]
        shape = tuple(original.inputs[0].shape[1:])
        model = tf_keras.Sequential([tf_keras.Input(shape, name=original.inputs[0].name.split(":")[0]), *layers])
    elif type(original).__name__ == "Functional":
        model = _rebuild_functional(original, tf_keras)
    else:
        raise PruningError(f"{type(original).__name__} is a subclassed model: --prune supports Sequential and "
                           "functional models (their layers can be rebuilt from the config)")
    by_name = {layer.name: layer for layer in model.layers}
    for layer in original.layers:
        weights = layer.get_weights()
        if weights:
            by_name[layer.name].set_weights(weights)
    return model


def _tf_keras_layer(layer: Any, tf_keras: Any) -> Any:
    cls = getattr(tf_keras.layers, type(layer).__name__, None)
    if cls is None:
        raise PruningError(f"layer {layer.name!r} is a {type(layer).__name__}, which tf-keras does not have: --prune "
                           "rebuilds models of built-in layers only")
    config = _plain_config(layer.get_config())
    accepted = set(inspect.signature(cls.__init__).parameters) | {"name", "trainable", "dtype"}
    unknown = {k: v for k, v in config.items() if k not in accepted}
    if any(v is not None for v in unknown.values()):
        raise PruningError(f"layer {layer.name!r} ({type(layer).__name__}) sets {', '.join(sorted(unknown))}, which "
                           "tf-keras' layer does not take: --prune cannot rebuild it")
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def _plain_config(config: dict) -> dict:
    """Keras 3 layer config -> tf-keras: the dtype policy becomes its name; initializers, regularizers and
    constraints (serialised objects whose arguments differ between the two) take tf-keras' defaults, which
    only matter for training from scratch: the weights are copied and fine-tuning starts from them."""
    plain = {}
    for key, value in config.items():
        if key == "dtype" and isinstance(value, dict):
            plain[key] = value.get("config", {}).get("name", "float32")
        elif isinstance(value, dict) and "class_name" in value:
            continue
        elif key not in ("build_config", "compile_config"):
            plain[key] = value
    return plain


def _rebuild_functional(original: Any, tf_keras: Any) -> Any:
    config = original.get_config()
    tensors: dict[tuple[str, int, int], Any] = {}
    layers_by_name = {layer.name: layer for layer in original.layers}
    for entry in config["layers"]:
        name = entry["name"]
        if entry["class_name"] == "InputLayer":
            shape = entry["config"].get("batch_shape") or entry["config"].get("batch_input_shape")
            tensors[(name, 0, 0)] = tf_keras.Input(tuple(shape[1:]), name=name)
            continue
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) != 1:
            raise PruningError(f"layer {name!r} is used {len(nodes)} times (shared layers are not rebuilt for pruning)")
        layer = _tf_keras_layer(layers_by_name[name], tf_keras)
        args = _resolve(nodes[0].get("args", []), tensors)
        kwargs = _resolve(nodes[0].get("kwargs", {}), tensors)
        result = layer(*args, **kwargs)
        for index, tensor in enumerate(result if isinstance(result, (list, tuple)) else [result]):
            tensors[(name, 0, index)] = tensor

    def endpoints(spec: Any) -> list:
        items = spec if spec and isinstance(spec[0], (list, tuple)) else [spec]
        return [tensors[(layer, node, index)] for layer, node, index in items]

    inputs, outputs = endpoints(config["input_layers"]), endpoints(config["output_layers"])
    return tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                          name=config.get("name"))


def _resolve(value: Any, tensors: dict) -> Any:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        layer, node, index = value["config"]["keras_history"]
        return tensors[(layer, node, index)]
    if isinstance(value, dict):
        return {k: _resolve(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # get_config() gives tuples, its JSON form lists
        return [_resolve(v, tensors) for v in value]
    return value


def _training_arrays(source: SourceModel, model: Any, samples: SampleSet, options: PreprocessOptions
                     ) -> tuple[np.ndarray, np.ndarray]:
    if samples.labels is None:
        raise SampleError(f"--fine-tune {samples.source} has no labels: pruning fine-tunes on labelled data (one "
                          "sub-folder of images per label, or an .npz with x and y)")
    outputs = model.outputs
    if len(model.inputs) != 1 or len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise PruningError(f"{source.path}: --prune fine-tunes classifiers (one input, one [batch, classes] output); "
                           f"this model has {len(model.inputs)} input(s) and outputs "
                           f"{[list(o.shape) for o in outputs]}")
    classes = int(outputs[0].shape[-1])
    labels = samples.labels
    if labels.min() < 0 or labels.max() >= classes:
        raise SampleError(f"--fine-tune {samples.source}: labels run from {labels.min()} to {labels.max()} but the "
                          f"model has {classes} classes (0..{classes - 1}): pass data labelled for this model")
    spec = float_input_spec(source.input.name, source.input.shape)
    x = np.stack([sample.reshape(source.input.shape[1:]) for sample in samples.model_inputs(spec, options)])
    return x.astype(np.float32), labels.astype(np.int64)


def _outputs_probabilities(model: Any, x: np.ndarray) -> bool:
    """True when the model ends in softmax (rows are probabilities), False for logits."""
    outputs = np.asarray(model(x, training=False))
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))
