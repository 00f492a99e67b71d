"""Classification accuracy: top-1 (and top-5) over labelled samples, per class too."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.errors import InputError
from edge_agent.evaluation.timing import Latency, TimedRunner
from edge_agent.postprocess import label_for
from edge_agent.samples import Progress, SampleSet
from edge_agent.service.active_model import ActiveModel

TOP_K = 5


class UnlabelledSamplesError(InputError, ValueError):
    """The samples carry no class ids, so there is nothing to score."""


@dataclass(frozen=True)
class ClassificationReport:
    samples: int
    top1_accuracy: float
    top5_accuracy: float | None  # None when the model has 5 classes or fewer
    per_class: dict[str, dict]  # label -> {"samples", "top1_accuracy"}
    latency: dict[str, Latency]

    def to_dict(self) -> dict:
        return {
            "task": "classification",
            "samples": self.samples,
            "top1_accuracy": round(self.top1_accuracy, 6),
            "top5_accuracy": None if self.top5_accuracy is None else round(self.top5_accuracy, 6),
            "per_class": self.per_class,
            "latency_ms": {stage: value.to_dict() for stage, value in self.latency.items()},
        }


def evaluate_classification(active: ActiveModel, samples: SampleSet, progress: Progress | None = None) -> ClassificationReport:
    """Run every sample through the agent's preprocessing, runtime and classifier; score the top classes.

    `active` should be built with top_k >= 5 and no threshold, so every sample gets its best classes."""
    if samples.labels is None:
        raise UnlabelledSamplesError(
            f"{samples.source} has no class ids: use one sub-folder of images per class, or a .npz with 'y'"
        )
    runner = TimedRunner(active)
    if samples.frames is not None:  # images: prepared by the agent's preprocessor, as camera frames are
        items, run = samples.frames, runner.run_frame
    else:  # prepared tensors: quantised to the input's type, nothing else
        items, run = samples.model_inputs(active.model.input, active.preprocessor.options), runner.run_tensor
    top1, top5 = [], []
    for number, (item, truth) in enumerate(zip(items, samples.labels), 1):
        ids = [c.id for c in run(item).classes]
        top1.append(bool(ids) and ids[0] == int(truth))
        top5.append(int(truth) in ids[:TOP_K])
        if progress:
            progress(number, len(samples))
    truths = np.asarray(samples.labels)
    hits = np.asarray(top1)
    classes = int(np.prod(active.model.outputs[0].shape[1:]))
    per_class = {
        label_for(active.labels, int(c)): {"samples": int((truths == c).sum()),
                                           "top1_accuracy": round(float(hits[truths == c].mean()), 6)}
        for c in np.unique(truths)
    }
    return ClassificationReport(
        samples=len(hits),
        top1_accuracy=float(hits.mean()),
        top5_accuracy=float(np.mean(top5)) if classes > TOP_K else None,
        per_class=per_class,
        latency=runner.latency(),
    )
