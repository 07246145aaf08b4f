"""The result row: one flat, typed record per run, and its Parquet schema.

Bump SCHEMA_VERSION when a column changes meaning or type; adding a nullable column
is backward compatible (readers match columns by name and fill it with nulls for old files).
Units are in the column names: *_bytes, *_seconds, *_ms, *_per_s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# 2: job_hash is the versioned identity of harness/spec/run.py (device type, kernel profiling,
# latency settings, method versions, model digest; no package version); `harness store upgrade`
# re-keys rows of schema 1.
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


COLUMNS: tuple[Column, ...] = (
    # identity
    Column("schema_version", pa.int32(), "version of this schema"),
    Column(
        "job_hash",
        pa.string(),
        "hash of the job's identity (harness/spec/run.py IDENTITY_KEYS: every setting that changes a result, the device type, the methods' versions, the model's digest; no paths, no package version): same hash, same experiment",
    ),
    Column("run_id", pa.string(), "unique id of this execution (a job re-run gets a new one)"),
    Column("created_at", pa.timestamp("us", tz="UTC"), "when the row was written"),
    Column("suite", pa.string(), "suite name, e.g. glue"),
    Column("task", pa.string(), "task name, e.g. sst2"),
    Column("method", pa.string(), "canonical method pipeline, non-default parameters only, e.g. lora:r=16"),
    Column("method_params", pa.string(), "JSON list of {method, params} with every parameter resolved"),
    Column("model", pa.string(), "model as the user named it (alias, path or hub id)"),
    Column("model_hub_id", pa.string(), "hub identity of the weights"),
    Column("seed", pa.int64(), "run seed (initialisation, shuffling, dropout)"),
    Column("config", pa.string(), "JSON of the full resolved run configuration"),
    # outcome
    Column("status", pa.string(), "ok or failed"),
    Column("error", pa.string(), "one-line error of a failed run"),
    Column("traceback", pa.string(), "traceback of a failed run"),
    # quality
    Column("metric", pa.string(), "name of the task's primary metric"),
    Column(
        "score",
        pa.float64(),
        "value of the primary metric on the evaluation split; higher_is_better says which way is better",
    ),
    Column(
        "higher_is_better",
        pa.bool_(),
        "whether a higher score is better (False for perplexities, where lower is better); null in rows written "
        "before it existed means True",
    ),
    Column("metrics", pa.string(), "JSON object of every metric computed"),
    Column("eval_split", pa.string(), "split(s) evaluated"),
    Column("eval_samples", pa.int64(), "examples evaluated (first split)"),
    Column("eval_seconds", pa.float64(), "wall seconds of evaluation (not part of train_seconds)"),
    # training cost
    Column("train_samples", pa.int64(), "examples in the training subset"),
    Column("train_steps", pa.int64(), "optimizer steps taken"),
    Column(
        "train_seconds", pa.float64(), "seconds of the training loop only: data, forward, backward, optimizer; no eval"
    ),
    Column("train_samples_per_s", pa.float64(), "training examples processed per second"),
    Column("train_tokens_per_s", pa.float64(), "non-padding training tokens processed per second"),
    Column("final_train_loss", pa.float64(), "mean loss over the last 10% of training steps"),
    Column("trainable_params", pa.int64(), "parameters updated by the optimizer"),
    Column("total_params", pa.int64(), "all parameters of the model as trained (adapters included)"),
    Column(
        "model_bytes",
        pa.int64(),
        "bytes a checkpoint of the final model holds (its state_dict: parameters, persistent buffers, packed quantized weights); regenerable non-persistent buffers are not stored (see model_memory_bytes)",
    ),
    Column(
        "adapter_bytes",
        pa.int64(),
        "bytes of the parameters still trainable in the final model: what an adapter checkpoint stores (after a merge, only the task head)",
    ),
    Column(
        "weight_sparsity",
        pa.float64(),
        "share of exactly-zero weights in linear and convolution layers of the final model",
    ),
    Column(
        "weight_bits",
        pa.float64(),
        "compression: effective bits per weight of the compressed layers, scales included (null: not quantized)",
    ),
    Column(
        "compression_kernel",
        pa.string(),
        "compression: real (a low-precision or sparse kernel ran) or simulated (dense float kernel); null: none",
    ),
    Column(
        "compressed_model_bytes",
        pa.int64(),
        "compression: bytes of the model stored in its compressed format (null: as model_bytes)",
    ),
    Column(
        "bits_per_parameter",
        pa.float64(),
        "8 * (compressed_model_bytes, or model_bytes) / parameters of the final model (packed quantized weights included): effective bits per parameter as stored; buffers such as batch-norm statistics are in the bytes, so a float32 model reads slightly above 32",
    ),
    Column(
        "flops_per_sample",
        pa.float64(),
        "forward FLOPs per example, counted by torch's FlopCounterMode on the latency batch (padding included); dense kernels on masked weights count in full",
    ),
    Column(
        "compress_seconds",
        pa.float64(),
        "seconds of the compression steps (calibration, quantizing, pruning) and of merging before them",
    ),
    Column(
        "init_seconds",
        pa.float64(),
        "seconds of the pipeline steps before training: data-driven initialisation (PiSSA/OLoRA SVDs, EVA/CorDA/LoRA-GA calibration) and compression before training (Wanda, GPTQ calibration); part of pipeline_seconds, not of train_seconds",
    ),
    Column(
        "pipeline_seconds",
        pa.float64(),
        "seconds of every pipeline step and the training: the pipeline's total cost in time (init_seconds + train_seconds + the steps after training)",
    ),
    Column(
        "pipeline_costs",
        pa.string(),
        "JSON list, one entry per step in order (method spec, 'train', 'merge'): phase, compresses, seconds, trainable_params, total_params, model_bytes after it",
    ),
    Column(
        "optimizer_state_bytes",
        pa.int64(),
        "bytes of the optimizer's state tensors at the end of training (Adam: two per parameter)",
    ),
    Column(
        "peak_memory_bytes",
        pa.int64(),
        "peak memory during training (see peak_memory_kind): CUDA, peak allocated (the model included); CPU, the peak resident set added above where training started (the process's libraries, data and model excluded)",
    ),
    Column("peak_memory_reserved_bytes", pa.int64(), "CUDA: peak reserved by the caching allocator; CPU: null"),
    Column(
        "peak_memory_kind",
        pa.string(),
        "cuda_max_allocated; cpu_rss_added (peak reset at the start, Linux); cpu_rss_added_upper_bound (the process's lifetime peak minus the start, elsewhere). Older rows: cpu_peak_rss_reset / cpu_peak_rss_process, the whole process's peak",
    ),
    Column(
        "peak_process_memory_bytes",
        pa.int64(),
        "CPU: the whole process's peak resident set during training (libraries, data and model included); CUDA: null",
    ),
    # inference cost
    Column("latency_bs1_p50_ms", pa.float64(), "inference forward latency at batch size 1, median"),
    Column("latency_bs1_p90_ms", pa.float64(), "inference forward latency at batch size 1, 90th percentile"),
    Column("latency_batch_p50_ms", pa.float64(), "inference forward latency at the eval batch size, median"),
    Column("latency_batch_p90_ms", pa.float64(), "inference forward latency at the eval batch size, 90th percentile"),
    Column("latency_batch_size", pa.int64(), "batch size of the latency_batch_* columns"),
    Column("latency_repeats", pa.int64(), "timed repeats behind each latency percentile (after warm-up)"),
    Column("latency_timer", pa.string(), "cuda_events or perf_counter"),
    # environment
    Column("device", pa.string(), "torch device, e.g. cuda:0 or cpu"),
    Column("device_name", pa.string(), "GPU name or CPU model"),
    Column("cuda_version", pa.string(), "CUDA version torch was built with"),
    Column("cpu_threads", pa.int64(), "torch intra-op threads"),
    Column("torch_version", pa.string(), ""),
    Column("transformers_version", pa.string(), ""),
    Column("peft_version", pa.string(), ""),
    Column("datasets_version", pa.string(), ""),
    Column("python_version", pa.string(), ""),
    Column("harness_version", pa.string(), ""),
    Column("git_commit", pa.string(), "harness commit, '-dirty' if the tree had uncommitted changes"),
    Column("host", pa.string(), "host name"),
    # causal language models (suite gsm8k)
    Column(
        "model_origin",
        pa.string(),
        "where the weights came from when not the hub's float checkpoint, e.g. 'gguf Q4_1, dequantized on load: <file>'",
    ),
    Column(
        "train_data",
        pa.string(),
        "training set given instead of the task's own: a hub id (e.g. meta-math/MetaMathQA) or lm-eval task names; null: the task's",
    ),
    Column(
        "train_format",
        pa.string(),
        "causal-LM training: JSON of the prompt template (or the lm-eval tasks whose format was used), the "
        "sources of the examples, and where the loss is taken (answer, or prompt and answer)",
    ),
    Column("train_tokens", pa.int64(), "non-padding input tokens processed in training"),
    Column("num_fewshot", pa.int64(), "generative evaluation: few-shot examples in each prompt"),
    Column(
        "retention",
        pa.string(),
        "lm-eval suite: JSON per retention task of its primary metric before the method, after it, and the "
        "change (signed so that forgetting is negative)",
    ),
    Column(
        "retention_change",
        pa.float64(),
        "mean over the retention tasks of the change in their primary metric (negative: adapting cost that much)",
    ),
    Column("retention_seconds", pa.float64(), "wall time of scoring the retention tasks, before and after the method"),
    Column(
        "eval_settings",
        pa.string(),
        "lm-eval evaluation: JSON of the evaluator's settings (lm-eval version, tasks and their versions, few-shot, limit, generation kwargs, max new tokens, batch size, filters, where each task's data came from)",
    ),
    Column(
        "ttft_bs1_p50_ms",
        pa.float64(),
        "time to first token at batch size 1 (a generate call for one new token: prefill + one step), median",
    ),
    Column("ttft_batch_p50_ms", pa.float64(), "time to first token at generation_batch_size, median"),
    Column(
        "generation_bs1_tokens_per_s",
        pa.float64(),
        "greedy generation throughput at batch 1: new tokens / wall time of the generate call, prefill included",
    ),
    Column(
        "generation_batch_tokens_per_s",
        pa.float64(),
        "greedy generation throughput at generation_batch_size, all sequences' new tokens / wall time",
    ),
    Column(
        "generation_batch_size", pa.int64(), "batch size of the *_batch_* generation columns (left-padded eval prompts)"
    ),
    Column(
        "generation_new_tokens",
        pa.int64(),
        "new tokens per sequence in the throughput measurement (EOS ignored, so every method generates as many)",
    ),
    Column("generation_repeats", pa.int64(), "timed repeats behind each generation median (after warm-up)"),
    # measurement depth
    Column("parameter_bytes", pa.int64(), "training memory: bytes of the model's parameters as trained"),
    Column("gradient_bytes", pa.int64(), "training memory: one gradient per trainable parameter, in its dtype"),
    Column(
        "activation_bytes",
        pa.int64(),
        "training memory: peak minus what was in use when training started minus gradients and optimizer state (activations and temporaries; exact on CUDA, an estimate on CPU)",
    ),
    Column(
        "train_flops",
        pa.float64(),
        "FLOPs of the forward and backward passes of every micro-batch trained on (FlopCounterMode once per distinct batch shape and trainable set, times its count; harness/measure/train_flops.py); the update itself not counted",
    ),
    Column("train_flops_per_step", pa.float64(), "train_flops / train_steps: the mean over the steps that ran"),
    Column(
        "mfu",
        pa.float64(),
        "FLOP utilisation: train_flops / train_seconds over the device's datasheet peak for what ran (bf16/fp16 tensor cores; fp32 with TF32 convolutions or matmuls, the TF32 peak; else FP32; harness/core/devices.py); empty for devices not in the table (CPUs); see mfu_flops_kind",
    ),
    Column(
        "mfu_flops_kind",
        pa.string(),
        "what the FLOPs behind mfu count: executed (the operations that ran: a frozen weight's gradient is not computed, so a parameter-efficient method counts less than 6 x parameters x tokens; attention as its matmuls under every kernel)",
    ),
    Column("cpu_model", pa.string(), "CPU model of the host (on GPU runs too)"),
    Column(
        "adapter_overhead_share",
        pa.float64(),
        "share of a training step's profiled operator/kernel time spent in the method's own modules (forward and backward; harness/measure/kernels.py); 0 without adapters; null when not profiled",
    ),
    Column(
        "adapter_overhead_share_inference",
        pa.float64(),
        "the same share over inference forward passes of the final model (0 once an adapter is merged)",
    ),
    Column(
        "top_kernel_category",
        pa.string(),
        "category with the most profiled time in training (inference if nothing trained): matmul, attention, normalisation, elementwise, memory copy, adapter op, other; the table is <results>/_kernels/<job_hash>-<run_id>.parquet",
    ),
    Column("cuda_driver_version", pa.string(), "CUDA driver version (GPU runs)"),
    Column(
        "model_digest",
        pa.string(),
        "what the weights are: sha256:<16 hex> over a local folder's config, weight and tokenizer files (or a checkpoint or GGUF file), hub:<commit> the local hub cache holds (hub:unresolved: the cache did not know the revision), random-init; unavailable: re-keyed after the model was gone",
    ),
    Column(
        "identity_upgraded_from",
        pa.string(),
        "job_hash this row had before `harness store upgrade` re-keyed it to the current identity (its model digest then taken from the model as found at upgrade time); null: written with the current identity",
    ),
    Column(
        "model_memory_bytes",
        pa.int64(),
        "bytes of the final model's parameters and buffers in memory, non-persistent buffers included (NOLA's random bases, regenerated from a seed, are here but not in model_bytes)",
    ),
    Column(
        "concurrent_jobs",
        pa.int64(),
        "jobs the executor ran at once on this job's device (its slots there: GPU jobs_per_device, or --max-parallel on CPU), this one included; 1: the device was the job's alone while timed; >1: timings and memory shared it and are not clean; null: not known (an executor that does not say)",
    ),
    Column(
        "eval_backend",
        pa.string(),
        "evaluation backend that produced the scores (harness/evaluation): torch (forward passes), lm-eval-hf (lm-eval on the transformers model in memory), vllm (lm-eval on a vLLM engine; LoRA unmerged); it enters job_hash only when not the suite's own (torch, lm-eval-hf); inference costs are measured on the model in memory; null: written before backends were recorded",
    ),  # the fair-comparison protocol (harness tune)
    Column(
        "selection_split",
        pa.string(),
        "the held-out split hyperparameters are selected on, disjoint from the training subset: carved from the training split with a fixed seed (--selection-samples) or the suite's own (vtab: val200); eval_split 'selection' when the row's score is on it; null: the run held none out",
    ),
    Column(
        "tuning_group",
        pa.string(),
        "the `harness tune` group the run belongs to (one method, task and budget; its record is <results>/_tuning/<group>.json); null: a run not from tuning",
    ),
    Column(
        "tuning_role",
        pa.string(),
        "trial: a tuning trial, scored on the selection split (never on the reported one); final: a seed of the configuration the group picked, scored on the reported split; null: a run not from tuning",
    ),
    Column(
        "tuned",
        pa.string(),
        'finals: JSON of the hyperparameters the group searched, at the values it picked on the selection split (e.g. {"lr": 0.001}); null otherwise',
    ),
)

SCHEMA = pa.schema(
    [pa.field(c.name, c.type, nullable=True, metadata={"doc": c.doc}) for c in COLUMNS],
    metadata={"harness_schema_version": str(SCHEMA_VERSION)},
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows -> a table with exactly the schema's columns; an unknown key is a bug."""
    for row in rows:
        unknown = set(row) - set(COLUMN_NAMES)
        if unknown:
            raise KeyError(f"result row has columns not in the schema: {sorted(unknown)}")
    columns = {c.name: [row.get(c.name) for row in rows] for c in COLUMNS}
    return pa.Table.from_pydict(columns, schema=SCHEMA)


# The predictions table: one row per evaluated example (per lm-eval filter and metric for a
# generation task), beside the run's row at <results>/_predictions/<job_hash>-<run_id>.parquet,
# so that two methods can be compared on the same examples (a paired test).
PREDICTION_COLUMNS: tuple[Column, ...] = (
    Column("job_hash", pa.string(), "job_hash of the run's row"),
    Column("run_id", pa.string(), "run_id of the run's row"),
    Column("split", pa.string(), "evaluation split the example is from, e.g. validation, validation_mismatched, test"),
    Column(
        "example_id",
        pa.int64(),
        "the example's id, the same for every method and seed: the data set's own id column where it has one "
        "(GLUE's idx), else its row number in the split as stored (before the fixed evaluation subset, and before "
        "a class subset's filter); lm-eval's doc_id for a generation task (lm-eval's limit takes the first documents)",
    ),
    Column(
        "metric",
        pa.string(),
        "the row metric (a key of the row's metrics) this example's score belongs to: the primary metric with its "
        "split's suffix (accuracy, accuracy_mismatched), or one per lm-eval filter (exact_match_strict, exact_match_flexible)",
    ),
    Column(
        "score",
        pa.float64(),
        "the example's score under `metric`, whose value in the row is the mean of these scores over the split "
        "(accuracy, exact match: 1 or 0); null where the metric is corpus-level, not a mean over examples "
        "(Matthews correlation, Pearson): compute it from prediction and reference",
    ),
    Column(
        "prediction",
        pa.float64(),
        "forward suites: the predicted class (the logits' argmax) or the regressed value; null for generation",
    ),
    Column("reference", pa.float64(), "forward suites: the reference class or value; null for generation"),
    Column("filter", pa.string(), "generation: the lm-eval filter of the response (strict-match, flexible-extract)"),
    Column("response", pa.string(), "generation: lm-eval's filtered response (the extracted answer, or [invalid])"),
    Column("target", pa.string(), "generation: lm-eval's target for the document"),
)

PREDICTION_SCHEMA = pa.schema(
    [pa.field(c.name, c.type, nullable=True, metadata={"doc": c.doc}) for c in PREDICTION_COLUMNS],
    metadata={"harness_schema_version": str(SCHEMA_VERSION)},
)
