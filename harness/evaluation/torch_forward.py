"""The harness's own forward path: predictions in eager PyTorch over batches of a prepared split,
and forward latency and FLOPs on the evaluation inputs. Every timing is a percentile over
repeats after warm-up (`measure_latency`), on fixed evaluation inputs, so methods compare."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from harness.core.progress import bar
from harness.evaluation.base import EVAL_BACKENDS, ForwardBackend
from harness.measure.flops import forward_flops
from harness.measure.passes import autocast, to_device
from harness.measure.timing import measure_latency


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    data,
    predictions_of: Callable[[Any], list],
    *,
    batch_size: int,
    precision: str,
    device: torch.device,
    label: str = "eval",
    show_progress: bool = True,
) -> tuple[list, float]:
    """Predictions over a prepared split, in order, and the seconds it took."""
    model.eval()
    loader = DataLoader(data.dataset, batch_size=batch_size, shuffle=False, collate_fn=data.collate)
    predictions: list = []
    start = time.perf_counter()
    with bar(label, len(loader), show_progress) as progress:
        for batch in loader:
            batch = to_device(batch, device)
            batch.pop("labels", None)
            with autocast(device, precision):
                outputs = model(**batch)
            predictions.extend(predictions_of(outputs))
            progress.advance()
    return predictions, time.perf_counter() - start


def forward_latency(model: torch.nn.Module, data, run, device: torch.device) -> dict[str, Any]:
    """Forward latency at batch size 1 and at the eval batch size, and FLOPs per example."""
    n = min(run.eval_batch_size, len(data.dataset))
    examples = [data.dataset[i] for i in range(n)]
    result: dict[str, Any] = {
        "latency_batch_size": n,
        "latency_repeats": run.latency_repeats,
        "latency_timer": "cuda_events" if device.type == "cuda" else "perf_counter",
    }
    model.eval()
    for key, batch_examples in (("bs1", examples[:1]), ("batch", examples)):
        batch = to_device(data.collate(batch_examples), device)
        batch.pop("labels", None)
        if key == "batch":  # as executed: padding included, the same batch for every method
            result["flops_per_sample"] = forward_flops(model, batch, device, run.precision) / len(batch_examples)

        @torch.inference_mode()
        def forward():
            with autocast(device, run.precision):
                return model(**batch)

        lat = measure_latency(forward, device, run.latency_warmup, run.latency_repeats)
        result[f"latency_{key}_p50_ms"] = lat.p50_ms
        result[f"latency_{key}_p90_ms"] = lat.p90_ms
    return result


@EVAL_BACKENDS.register("torch")
class TorchForward(ForwardBackend):
    """Eager PyTorch forward passes of the model in memory, under the run's autocast precision."""

    current = True

    def predict(self, model, data, predictions_of, **settings) -> tuple[list, float]:
        return predict(model, data, predictions_of, **settings)

    def costs(self, model, data, run, device) -> dict[str, Any]:
        return forward_latency(model, data, run, device)
