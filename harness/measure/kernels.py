"""Per-run kernel timing tables from `torch.profiler`, and the share of time a method's
own modules take (adapter overhead).

    prof = profile_steps(step, device, warmup=2, steps=3, adapters=pipeline.adapter_scopes(model))
    prof.rows            # one dict per (operator or kernel name, category), by time, descending
    prof.adapter_share   # fraction of the table's time spent in the adapters (None: not measured)
    prof.to_table(job_hash, "train")

On CUDA the rows are kernels, memcpys and memsets with their device time; on CPU, operators
(`ns::op`) with their self CPU time, wrappers (ranges, autograd nodes) left out. An operator
is adapter work when it runs inside a scope's forward but not inside the scope's excluded
base layer, or in the backward node of such an operator (linked by autograd sequence
number). Which modules are scopes is for the methods to say (`Method.adapter_scopes`): this
module knows no method. The full account, with what the share does and does not cover, is
docs/kernel-profiles.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ADAPTER_RANGE = "harness.adapter"
BASE_RANGE = "harness.adapter.base"
STEP_RANGE = "harness.step"
_EVALUATE = "autograd::engine::evaluate_function:"

MATMUL, ATTENTION, NORMALISATION = "matmul", "attention", "normalisation"
ELEMENTWISE, MEMORY_COPY, ADAPTER_OP, OTHER = "elementwise", "memory copy", "adapter op", "other"
CATEGORIES = (MATMUL, ATTENTION, NORMALISATION, ELEMENTWISE, MEMORY_COPY, ADAPTER_OP, OTHER)

# Ordered: the first pattern that matches (case-insensitive `re.search`) wins. The order
# matters where kernel names carry words of several categories:
#  1. device transfers first: "Memcpy HtoD", "Memset (Device)".
#  2. the loss (log_softmax, nll_loss) is `other`, before attention claims "softmax"
#     (its CUDA kernel is cunn_SoftMaxForward<..., LogSoftMaxForwardEpilogue>).
#  3. attention before matmul: fused attention kernels are CUTLASS/sm80 kernels too
#     (fmha_cutlassF_..._sm80, flash_fwd_kernel<..., sm80>). The unfused path's bmm stays
#     matmul; its softmax is attention.
#  4. normalisation before matmul and elementwise (layer norm kernels are elementwise-ish).
#  5. matmul: ATen contraction ops (convolutions included: the same tensor-core work) and
#     cuBLAS/CUTLASS/cuDNN kernel families (gemm, gemv, nvjet on Hopper, xmma, sm80_/
#     ampere_ prefixes, splitKreduce).
#  6. memory copy before elementwise: CUDA copy kernels are instances of the generic
#     elementwise kernel templates (elementwise_kernel<..., direct_copy_kernel_cuda ...>).
#  7. elementwise: ATen pointwise ops (forward and *_backward), the optimizers' fused
#     _foreach_* ops and the generic pointwise kernel templates.
# `adapter op` never comes from a name: rows attributed to adapter scopes get it.
CATEGORY_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern, re.IGNORECASE))
    for category, pattern in (
        (MEMORY_COPY, r"^mem(cpy|set)\b"),
        (OTHER, r"log_?softmax|nll_loss|cross_entropy"),
        (ATTENTION, r"scaled_dot_product|_fused_sdp|flash|fmha|efficient_attention|attention|softmax"),
        (NORMALISATION, r"(layer|rms|batch|group|instance)_?norm|gammabeta|rowwisemoments|\bbn_(fw|bw)"),
        (
            MATMUL,
            (
                r"^aten::(mm|addmm|_addmm_activation|bmm|baddbmm|addbmm|matmul|linear|mv|addmv|dot|vdot|einsum|_scaled_mm|_int_mm|"
                r"conv\w*|_convolution\w*|convolution\w*|cudnn_convolution\w*|mkldnn_convolution|_slow_conv2d\w*)$"
                r"|gemm|gemv|cutlass|cublas|cudnn|nvjet|xmma|splitkreduce|\bsm\d+_|\b(ampere|volta|turing|hopper)_|implicit_convolve|winograd"
            ),
        ),
        (
            MEMORY_COPY,
            (
                r"^aten::(copy_|to|_to_copy|contiguous|clone|cat|stack|index|index_select|index_put_|_index_put_impl_|index_add_|"
                r"gather|scatter\w*|embedding\w*|take|masked_select|masked_scatter\w*|narrow_copy|repeat|repeat_interleave|"
                r"flip|roll|constant_pad_nd|pad|slice_backward|select_backward|_unsafe_index\w*|split_with_sizes_copy|"
                r"\w+_copy|_reshape_copy)$"
                r"|copy|catarray|index_?select|index_elementwise|indexing|gather|scatter|embedding"
            ),
        ),
        (
            ELEMENTWISE,
            (
                r"^aten::(_foreach_\w+|(native_)?(add|sub|rsub|mul|div|neg|pow|sqrt|rsqrt|exp|exp2|expm1|log|log1p|log2|abs|sign|"
                r"reciprocal|erf|erfinv|tanh|sigmoid|relu|relu6|gelu|silu|mish|elu|selu|celu|leaky_relu|hardtanh|hardswish|"
                r"hardsigmoid|softplus|threshold|clamp|clamp_min|clamp_max|clip|maximum|minimum|where|masked_fill|lerp|"
                r"addcmul|addcdiv|fill|zero|zeros_like|ones_like|full_like|dropout|feature_dropout|bernoulli|eq|ne|lt|le|gt|"
                r"ge|logical_\w+|bitwise_\w+|floor|ceil|round|trunc|frac|square|sin|cos|tan|fmod|remainder|"
                r"nan_to_num|isnan|isinf|isfinite)(_backward)?_?)$"
                r"|elementwise_kernel|multi_tensor_apply|fill_?functor|foreach"
            ),
        ),
    )
)


def categorise(name: str) -> str:
    """Category of an operator or kernel by its name (see CATEGORY_RULES); `other` if none."""
    for category, pattern in CATEGORY_RULES:
        if pattern.search(name):
            return category
    return OTHER


# ---------------------------------------------------------------------------- scopes


@dataclass(frozen=True, eq=False)
class AdapterScope:
    """A module whose forward is adapter work, except inside `exclude` (its base layer:
    the model's own work, which the module calls)."""

    module: nn.Module
    exclude: tuple[nn.Module, ...] = ()


class _RangeHooks:
    """Forward pre/post hooks that wrap each scope's forward in record_function ranges."""

    def __init__(self, scopes: Iterable[AdapterScope | nn.Module]):
        self.handles: list[Any] = []
        self.open: dict[int, list[Any]] = {}
        for scope in scopes:
            if isinstance(scope, nn.Module):
                scope = AdapterScope(scope)
            self._hook(scope.module, ADAPTER_RANGE)
            for base in scope.exclude:
                self._hook(base, BASE_RANGE)

    def _hook(self, module: nn.Module, range_name: str) -> None:
        if isinstance(module, (nn.ModuleDict, nn.ModuleList)):  # never called themselves: hook what they hold
            for child in module.children():
                self._hook(child, range_name)
            return
        key = id(module)

        def enter(_module, _args):
            rf = torch.profiler.record_function(range_name)
            rf.__enter__()
            self.open.setdefault(key, []).append(rf)

        def leave(_module, _args, _output):
            stack = self.open.get(key)
            if stack:  # a module re-entered (called inside itself) closes its ranges innermost first
                stack.pop().__exit__(None, None, None)

        self.handles.append(module.register_forward_pre_hook(enter))
        self.handles.append(module.register_forward_hook(leave, always_call=True))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        for stack in self.open.values():  # left open by an exception in a forward
            while stack:
                stack.pop().__exit__(None, None, None)
        self.handles.clear()


# ---------------------------------------------------------------------------- profile


@dataclass
class KernelProfile:
    rows: list[dict]  # name, calls, total_us, mean_us, category, share, by total_us descending
    total_us: float
    adapter_share: float | None
    device_kind: str  # "cuda" or "cpu"
    steps: int = 1
    adapter_us: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def top_category(self) -> str | None:
        """The category with the most time (adapter rows count as `adapter op`)."""
        by_category = self.category_shares()
        return max(by_category, key=by_category.__getitem__) if by_category else None

    def category_shares(self) -> dict[str, float]:
        shares: dict[str, float] = {}
        for row in self.rows:
            shares[row["category"]] = shares.get(row["category"], 0.0) + row["share"]
        return dict(sorted(shares.items(), key=lambda kv: -kv[1]))

    def top(self, n: int = 5) -> list[dict]:
        return self.rows[:n]

    def to_table(self, job_hash: str, phase: str):
        """One row per table entry, rank 1 = most time. phase: "train" or "inference"."""
        import pyarrow as pa

        if phase not in ("train", "inference"):
            raise ValueError(f"phase must be 'train' or 'inference', not {phase!r}")
        schema = pa.schema(
            [
                ("job_hash", pa.string()),
                ("phase", pa.string()),
                ("rank", pa.int64()),
                ("name", pa.string()),
                ("category", pa.string()),
                ("calls", pa.int64()),
                ("total_us", pa.float64()),
                ("mean_us", pa.float64()),
                ("share", pa.float64()),
            ]
        )
        columns = {
            "job_hash": [job_hash] * len(self.rows),
            "phase": [phase] * len(self.rows),
            "rank": list(range(1, len(self.rows) + 1)),
            **{
                key: [row[key] for row in self.rows]
                for key in ("name", "category", "calls", "total_us", "mean_us", "share")
            },
        }
        return pa.table(columns, schema=schema)

    def format(self, n: int = 5) -> str:
        lines = [f"{'share':>6}  {'total_us':>11}  {'calls':>6}  {'category':<13}  name"]
        for row in self.top(n):
            name = row["name"] if len(row["name"]) <= 90 else row["name"][:87] + "..."
            lines.append(
                f"{row['share']:6.1%}  {row['total_us']:11.1f}  {row['calls']:6d}  {row['category']:<13}  {name}"
            )
        return "\n".join(lines)


def profile_steps(
    fn: Callable[[], None],
    device: torch.device | str,
    warmup: int = 2,
    steps: int = 3,
    adapters: Sequence[AdapterScope | nn.Module] | None = None,
    repeats: int = 1,
    robust: bool | None = None,
) -> KernelProfile:
    """Run `fn` `warmup` times untimed, then `steps` times under torch.profiler, and
    return the operator/kernel table (docs/kernel-profiles.md says what is timed).

    adapters: the scopes whose time is the adapter overhead (a method's `adapter_scopes`;
    a bare module is a scope without an excluded base). None: the share is not measured
    (None); []: nothing is adapter work (0.0). Hooks exist only during the timed steps.

    Interference (another process taking the core, preemption) only ever adds time, to
    whichever operator happens to run; on a shared CPU one hit can outweigh a small step.
    repeats: profile the `steps` that many times. robust (default: on CPU yes, on CUDA
    no): every step runs the same operators in the same order, so each operator call's
    time is taken as its least over all steps of all repeats, and the table reports that
    times `steps` (a step that ran other operators than the others turns this off, with a
    note). Not robust: the table sums the profile with the least total time.
    """
    if steps < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1, repeats >= 1, warmup >= 0; got {steps}, {repeats}, {warmup}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    robust = not cuda if robust is None else robust
    for _ in range(warmup):
        fn()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiles: list[tuple[list[_Item], bool, list[str], list[Any]]] = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        hooks = _RangeHooks(adapters or [])
        try:
            with torch.profiler.profile(activities=activities, record_shapes=False, with_stack=False) as prof:
                for _ in range(steps):
                    with torch.profiler.record_function(STEP_RANGE):
                        fn()
                if cuda:
                    torch.cuda.synchronize(device)
        finally:
            hooks.remove()
        events = list(prof.events())
        items, measured, notes = _items(events, cuda, adapters is not None)
        step_ranges = sorted(
            (e for e in events if e.name == STEP_RANGE and e.device_type == torch.autograd.DeviceType.CPU),
            key=lambda e: e.time_range.start,
        )
        profiles.append((items, measured, notes, step_ranges))

    measured = all(p[1] for p in profiles)
    notes = sorted({note for p in profiles for note in p[2]})
    if robust:
        per_step = _per_step_minimum(profiles, steps)
        if per_step is not None:
            return _table(
                per_step, cuda, measured, steps, notes + [f"per operator call, least time over {steps * repeats} steps"]
            )
        notes.append(
            "steps ran different operators: table summed over the least-disturbed profile instead of per-call minima"
        )
    best = min(profiles, key=lambda p: sum(item.us for item in p[0]))
    return _table(best[0], cuda, measured, steps, notes)


def _per_step_minimum(profiles, steps: int) -> list[_Item] | None:
    """One item per operator call of a step, with its least time over all steps times
    `steps`; None when the steps' operator sequences differ."""
    import bisect

    sequences: list[list[_Item]] = []
    for items, _, _, ranges in profiles:
        if len(ranges) != steps:
            return None
        starts = [r.time_range.start for r in ranges]
        by_step: list[list[_Item]] = [[] for _ in ranges]
        for item in items:
            k = bisect.bisect_right(starts, item.start) - 1
            if k >= 0 and item.start <= ranges[k].time_range.end:
                by_step[k].append(item)
        sequences.extend(by_step)
    keys = [(item.name, item.adapter) for item in sequences[0]]
    if not keys or any([(item.name, item.adapter) for item in seq] != keys for seq in sequences[1:]):
        return None
    return [
        _Item(name, min(seq[i].us for seq in sequences) * steps, adapter, 0.0, calls=steps)
        for i, (name, adapter) in enumerate(keys)
    ]


def _is_cpu_op(evt) -> bool:
    """An operator ("ns::op") rather than a wrapper range, an autograd node or a marker."""
    name = evt.name
    if evt.is_async or getattr(evt, "is_user_annotation", False) or "::" not in name:
        return False
    return not name.startswith(("autograd::", "profiler::", "torch::autograd::"))


def _is_device_work(evt) -> bool:
    """A kernel, memcpy or memset (not a GPU-side record_function annotation)."""
    if evt.device_type == torch.autograd.DeviceType.CPU:
        return False
    if getattr(evt, "is_user_annotation", False) or "annotation" in (getattr(evt, "activity_type", None) or ""):
        return False
    return evt.name not in (ADAPTER_RANGE, BASE_RANGE, STEP_RANGE) and not evt.name.startswith("ProfilerStep")


class _Attribution:
    """Decides, per CPU event, whether its time is adapter work (docs/kernel-profiles.md)."""

    def __init__(self, events: list):
        self.nodes: set[tuple[int, int]] | None = None
        self.memo: dict[int, bool] = {}
        cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
        # Pass 1, markers only: which autograd nodes were created inside adapter ranges.
        # For each (thread, sequence number) the last op that started with it made the node.
        # Only ops run with grad mode on carry a number: forward ops, and in backward only
        # a recomputed forward (activation checkpointing), whose nodes it did create. The
        # node ranges themselves (XBackward0, evaluate_function) are not ops.
        creator: dict[tuple[int, int], Any] = {}
        for e in cpu:
            if e.sequence_nr >= 0 and _is_cpu_op(e):
                key = (e.thread, e.sequence_nr)
                if key not in creator or e.time_range.start >= creator[key].time_range.start:
                    creator[key] = e
        self.nodes = {key for key, e in creator.items() if self.is_adapter(e, use_nodes=False)}
        self.memo.clear()

    def is_adapter(self, evt, use_nodes: bool = True) -> bool:
        path = []
        decided = False
        while evt is not None:
            if use_nodes and id(evt) in self.memo:
                decided = self.memo[id(evt)]
                break
            path.append(evt)
            name = evt.name
            if name == ADAPTER_RANGE:
                decided = True
                break
            if name == BASE_RANGE:
                decided = False
                break
            if use_nodes and name.startswith(_EVALUATE) and evt.sequence_nr >= 0:
                decided = (evt.fwd_thread, evt.sequence_nr) in (self.nodes or ())
                break
            evt = evt.cpu_parent
        if use_nodes:
            for e in path:
                self.memo[id(e)] = decided
        return decided


@dataclass
class _Item:
    """One timed operator call (CPU) or kernel (CUDA)."""

    name: str
    us: float
    adapter: bool
    start: float  # when it started on the CPU (a kernel: its launching operator), to place it in a step
    calls: int = 1


def _items(events: list, cuda: bool, measure_adapters: bool) -> tuple[list[_Item], bool, list[str]]:
    """The timed items of a profile, in start order; whether adapters were measured; notes."""
    attribution = _Attribution(events) if measure_adapters else None
    items: list[_Item] = []
    if not cuda:
        for e in events:
            if e.device_type == torch.autograd.DeviceType.CPU and _is_cpu_op(e):
                adapter = attribution is not None and attribution.is_adapter(e)
                items.append(_Item(e.name, e.self_cpu_time_total, adapter, e.time_range.start))
        return items, attribution is not None, []
    by_corr = {
        e.id: e
        for e in events
        if e.device_type == torch.autograd.DeviceType.CPU
        and not e.is_async
        and getattr(e, "linked_correlation_id", 0) == 0
    }
    linked = True
    for e in events:
        if not _is_device_work(e):
            continue
        corr = getattr(e, "linked_correlation_id", None)
        launcher = by_corr.get(corr) if corr is not None else None
        linked = linked and corr is not None
        adapter = attribution is not None and launcher is not None and attribution.is_adapter(launcher)
        items.append(_Item(e.name, e.time_range.elapsed_us(), adapter, (launcher or e).time_range.start))
    items.sort(key=lambda item: item.start)  # stable: kernels of one operator keep their order
    if attribution is not None and not linked:
        return items, False, ["this torch version does not link kernels to operators: adapter share not measured"]
    return items, attribution is not None, []


def _table(items: list[_Item], cuda: bool, measured: bool, steps: int, notes: list[str]) -> KernelProfile:
    groups: dict[tuple[str, str], list[float]] = {}
    adapter_us = 0.0
    for item in items:
        category = ADAPTER_OP if item.adapter else categorise(item.name)
        group = groups.setdefault((item.name, category), [0, 0.0])
        group[0] += item.calls
        group[1] += item.us
        if item.adapter:
            adapter_us += item.us
    total = sum(group[1] for group in groups.values())
    rows = [
        {
            "name": name,
            "calls": int(calls),
            "total_us": float(us),
            "mean_us": float(us) / calls,
            "category": category,
            "share": float(us) / total if total > 0 else 0.0,
        }
        for (name, category), (calls, us) in groups.items()
    ]
    rows.sort(key=lambda row: (-row["total_us"], row["name"]))
    share = (adapter_us / total if total > 0 else 0.0) if measured else None
    return KernelProfile(
        rows=rows,
        total_us=float(total),
        adapter_share=share,
        device_kind="cuda" if cuda else "cpu",
        steps=steps,
        adapter_us=adapter_us if measured else None,
        notes=list(notes),
    )


def summarise(events: list, cuda: bool, measure_adapters: bool = True, steps: int = 1) -> KernelProfile:
    """The table summed over a profiler's `events()` (one profile, no per-step minima)."""
    items, measured, notes = _items(events, cuda, measure_adapters)
    return _table(items, cuda, measured, steps, notes)
