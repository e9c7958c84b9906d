"""Tasks as model requests and scores: what to ask the model for each example, and what its answers are
worth. No model and no Ray here: :func:`execute` runs requests on a backend, and the stage may instead
send them through Ray Data (:mod:`lmforge.evaluate.ray_eval`).

Requests are plain dicts: ``{"rid", "kind": "generate", "ids", "max_tokens", "stop"}`` (greedy) or
``{"rid", "kind": "score", "ctx", "cont"}`` (log-likelihood of ``cont`` after ``ctx``).
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

from lmforge.data import canaries as canary_data
from lmforge.evaluate import metrics
from lmforge.tasks.chat import chat_prompt
from lmforge.tasks.examples import Example

GENERATION_METRICS = {"rouge1", "rouge2", "rougeL", "bleu", "chrf", "exact_match", "f1"}
CANARY_CANDIDATES = 100  # random secrets of the same shape each canary is ranked among (exposure)


@dataclasses.dataclass
class Task:
    name: str
    kind: str  # generate | choice | bias | canary
    metrics: tuple[str, ...]
    examples: list[Example]
    max_tokens: int = 64
    stop: tuple[str, ...] = ("\n",)
    canaries: list[canary_data.Canary] = dataclasses.field(default_factory=list)
    chat: bool = False  # prompts go in as a user turn of the model's chat template (instruction-tuned models)

    @property
    def korean_target(self) -> bool:
        return self.name.endswith("_ko")


def _ids(tokenizer, text: str, specials: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=specials, verbose=False).input_ids


def _context(tokenizer, text: str) -> list[int]:
    """Context ids; an empty context is the tokenizer's start (or end) token, so the first token is scored."""
    ids = _ids(tokenizer, text) if text else []
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start if start is not None else 0]
    return ids


def _prompt(task: Task, ex: Example, tokenizer) -> tuple[list[int], list[str]]:
    """The prompt's ids (and the stop strings a chat template needs): a chat up to its last assistant turn,
    a prompt as a user turn when the task is in chat mode, else the prompt as plain text."""
    if ex.messages:
        last = max(i for i, msg in enumerate(ex.messages) if msg["role"] == "assistant")
        return chat_prompt(tokenizer, ex.messages[:last])
    if task.chat:
        return chat_prompt(tokenizer, [{"role": "user", "content": ex.prompt}])
    return _ids(tokenizer, ex.prompt), []


def requests_for(task: Task, tokenizer) -> list[dict]:
    out = []
    for ex in task.examples:
        rid = f"{task.name}/{ex.id}"
        if task.kind == "generate":
            ids, extra = _prompt(task, ex, tokenizer)
            out.append({"rid": rid, "kind": "generate", "ids": ids, "max_tokens": task.max_tokens,
                        "stop": list(task.stop) + extra})
            if "perplexity" in task.metrics:
                lead = "" if task.chat or ex.messages else " "  # an answer turn starts bare
                out.append({"rid": f"{rid}/ppl", "kind": "score", "ctx": ids,
                            "cont": _ids(tokenizer, lead + ex.references()[0].strip(), specials=False)})
        elif task.kind == "choice":
            ctx = _prompt(task, ex, tokenizer)[0] if task.chat else _context(tokenizer, ex.prompt)
            choices = [c.strip() for c in ex.choices] if task.chat else ex.choices  # an answer turn starts bare
            out += [{"rid": f"{rid}/{j}", "kind": "score", "ctx": ctx, "cont": _ids(tokenizer, c, specials=False)}
                    for j, c in enumerate(choices)]
        elif task.kind == "bias":
            ctx = _context(tokenizer, ex.context)
            conts = [*ex.pair, *(ex.choices or [])]
            out += [{"rid": f"{rid}/{j}", "kind": "score", "ctx": ctx, "cont": _ids(tokenizer, c, specials=False)}
                    for j, c in enumerate(conts)]
    for canary in task.canaries:
        out += _canary_requests(task, canary, tokenizer)
    return out


def _canary_requests(task: Task, canary: canary_data.Canary, tokenizer) -> list[dict]:
    rid = f"{task.name}/{canary.id}"
    ctx = _ids(tokenizer, canary.prefix)
    secret_ids = _ids(tokenizer, " " + canary.secret, specials=False)
    rng = random.Random(canary.id)
    candidates = [canary.secret] + [canary_data.random_secret(canary.kind, rng) for _ in range(CANARY_CANDIDATES)]
    return [{"rid": f"{rid}/greedy", "kind": "generate", "ids": ctx, "max_tokens": len(secret_ids) + 4, "stop": []},
            *({"rid": f"{rid}/{j}", "kind": "score", "ctx": ctx, "cont": _ids(tokenizer, " " + c, specials=False)}
              for j, c in enumerate(candidates))]


def execute(backend, requests: list[dict], batch_size: int = 8, progress=None) -> dict[str, dict]:
    """Run requests on a backend in batches: ``{rid: {"text"} | {"logprob", "greedy"}}``; ``progress(n)``,
    when given, is told how many are done after each batch."""
    results: dict[str, dict] = {}
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in requests:
        key = ("generate", r["max_tokens"], tuple(r["stop"])) if r["kind"] == "generate" else ("score",)
        groups[key].append(r)
    for key, group in groups.items():
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            if key[0] == "generate":
                texts = backend.generate([r["ids"] for r in batch], key[1], list(key[2]))
                results.update({r["rid"]: {"text": t} for r, t in zip(batch, texts)})
            else:
                scored = backend.loglikelihood([(r["ctx"], r["cont"]) for r in batch], batch_size=batch_size)
                results.update({r["rid"]: {"logprob": lp, "greedy": g, "tokens": len(r["cont"])}
                                for r, (lp, g) in zip(batch, scored)})
            if progress:
                progress(len(results))
    return results


# ---------------------------------------------------------------- scores

def score(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict]]:
    """``(metrics, prediction rows)`` of one task from its requests' results."""
    if task.kind == "generate":
        return _score_generation(task, results)
    if task.kind == "choice":
        return _score_choice(task, results)
    if task.kind == "bias":
        return _score_bias(task, results)
    return _score_canaries(task, results)


def _score_generation(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict]]:
    preds = [results[f"{task.name}/{ex.id}"]["text"].strip() for ex in task.examples]
    refs = [ex.references() for ex in task.examples]
    wanted, out = set(task.metrics), {}
    if wanted & {"rouge1", "rouge2", "rougeL"}:
        out.update(metrics.rouge(preds, refs, tuple(k for k in ("rouge1", "rouge2", "rougeL") if k in wanted)))
    if wanted & {"bleu", "chrf"}:
        out.update({k: v for k, v in metrics.sacrebleu_scores(preds, refs, task.korean_target).items() if k in wanted})
    if wanted & {"exact_match", "f1"}:
        out.update({k: v for k, v in metrics.qa_scores(preds, refs).items() if k in wanted})
    if "perplexity" in wanted:
        scored = [results[f"{task.name}/{ex.id}/ppl"] for ex in task.examples]
        out["perplexity"] = metrics.perplexity(sum(s["logprob"] for s in scored), sum(s["tokens"] for s in scored))
    out["examples"] = len(preds)
    rows = [{"task": task.name, "id": ex.id, "prompt": ex.prompt if ex.prompt is not None else ex.messages,
             "prediction": p, "reference": ex.reference} for ex, p in zip(task.examples, preds)]
    return out, rows


def _score_choice(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict]]:
    predicted, rows = [], []
    for ex in task.examples:
        lps = [results[f"{task.name}/{ex.id}/{j}"]["logprob"] for j in range(len(ex.choices))]
        predicted.append(max(range(len(lps)), key=lps.__getitem__))
        rows.append({"task": task.name, "id": ex.id, "prompt": ex.prompt, "prediction": ex.choices[predicted[-1]],
                     "reference": ex.choices[ex.answer], "logprobs": lps})
    out = metrics.classification_scores(predicted, [ex.answer for ex in task.examples])
    out["examples"] = len(predicted)
    return out, rows


def _share(successes: int, n: int) -> dict:
    low, high = metrics.wilson_interval(successes, n)
    return {"share": successes / max(1, n), "ci95": [low, high], "pairs": n}


def _score_bias(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The share of pairs where the model prefers the stereotyped sentence (0.5 is no preference), overall,
    per dataset and per category, with 95% intervals; StereoSet's language-model score too (the share of
    items where a meaningful sentence beats the unrelated one)."""
    by_category, by_source, rows = defaultdict(list), defaultdict(list), []
    meaningful = []
    for ex in task.examples:
        lps = [results[f"{task.name}/{ex.id}/{j}"]["logprob"] for j in range(2 + len(ex.choices or []))]
        prefers = lps[0] > lps[1]
        by_category[ex.category].append(prefers)
        by_source[ex.category.split("/")[0]].append(prefers)
        if ex.choices:
            meaningful.append(max(lps[0], lps[1]) > lps[2])
        rows.append({"task": task.name, "id": ex.id, "category": ex.category, "prefers_stereotype": prefers,
                     "logprobs": lps})
    every = [p for v in by_category.values() for p in v]
    out = {"stereotype_preference": _share(sum(every), len(every))["share"],
           "overall": _share(sum(every), len(every)),
           "by_dataset": {k: _share(sum(v), len(v)) for k, v in sorted(by_source.items())},
           "by_category": {k: _share(sum(v), len(v)) for k, v in sorted(by_category.items())}}
    if meaningful:
        out["stereoset_language_model_score"] = _share(sum(meaningful), len(meaningful))
    return out, rows


def _score_canaries(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict]]:
    """Reproduced: the greedy completion of the prefix contains the secret. Exposure (Carlini et al.):
    log2(candidates) - log2(rank of the secret among them by log-likelihood); the maximum means the
    model ranks its secret above every random alternative."""
    rows, reproduced, exposures = [], 0, []
    for canary in task.canaries:
        rid = f"{task.name}/{canary.id}"
        completion = results[f"{rid}/greedy"]["text"]
        lps = [results[f"{rid}/{j}"]["logprob"] for j in range(CANARY_CANDIDATES + 1)]
        rank = 1 + sum(lp > lps[0] for lp in lps[1:])
        exposure = metrics.exposure(rank, len(lps))
        hit = canary.secret in completion
        reproduced += hit
        exposures.append(exposure)
        rows.append({"task": task.name, "id": canary.id, "kind": canary.kind, "copies": len(canary.documents),
                     "reproduced": hit, "rank": rank, "exposure": exposure, "completion": completion})
    n = len(task.canaries)
    return {"canaries": n, "reproduced": reproduced, "reproduced_share": reproduced / max(1, n),
            "mean_exposure": sum(exposures) / max(1, n), "max_exposure": max(exposures, default=0.0),
            "exposure_ceiling": metrics.exposure(1, CANARY_CANDIDATES + 1)}, rows
