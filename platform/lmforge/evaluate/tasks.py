"""Tasks as model requests and scores: what to ask the model for each example, and what its answers are
worth. No model and no Ray here: :func:`execute` runs requests on a backend, and the stage may instead
send them through Ray Data (:mod:`lmforge.evaluate.ray_eval`).

Requests are plain dicts: ``{"rid", "kind": "generate", "ids", "max_tokens", "stop"}`` (greedy) or
``{"rid", "kind": "score", "ctx", "cont"}`` (log-likelihood of ``cont`` after ``ctx``).

Multiple choice is asked as lm-evaluation-harness asks it: the context is the description, the few-shot
examples (each ``prompt + delimiter + answer``, then a blank line) and the prompt; each choice is scored
as ``delimiter + choice``; the pair is tokenized whole and split where the context's tokens end
(:func:`encode_pair`), so a choice's first token is the one the model would produce after the context.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict

import numpy as np

from lmforge.data import canaries as canary_data
from lmforge.evaluate import metrics
from lmforge.evaluate.intervals import Sample
from lmforge.tasks.chat import chat_prompt, has_template
from lmforge.tasks.examples import Example

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
    description: str = ""  # before the shots and the prompt
    target_delimiter: str = " "  # between a prompt and its answer
    shots: list[Example] = dataclasses.field(default_factory=list)  # the pool few-shot examples come from
    num_fewshot: int = 0
    seed: int = 1234

    def fewshot(self, ex: Example) -> list[Example]:
        """The example's shots: a draw seeded by the task and the example's id (so the same example gets the
        same shots in any subset, order or run), never the example itself."""
        if not self.num_fewshot:
            return []
        pool = [s for s in self.shots if s.id != ex.id and s.prompt is not None]
        return random.Random(f"{self.seed}/{self.name}/{ex.id}").sample(pool, min(self.num_fewshot, len(pool)))

    def context(self, ex: Example) -> str:
        """The text the answer follows: description, shots, prompt."""
        shots = "".join(f"{s.prompt}{self.target_delimiter}{s.target()}\n\n" for s in self.fewshot(ex))
        return f"{self.description}{shots}{ex.prompt}"

    @property
    def korean_target(self) -> bool:
        return self.name.endswith("_ko")


def _ids(tokenizer, text: str, specials: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=specials, verbose=False).input_ids


def _start(tokenizer) -> list[int]:
    """What an empty context is: the start (or end) token, so the first token is scored."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return [start if start is not None else 0]


def _context(tokenizer, text: str) -> list[int]:
    """Context ids; an empty context is the tokenizer's start (or end) token, so the first token is scored."""
    return (_ids(tokenizer, text) if text else []) or _start(tokenizer)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split of a (context, continuation) pair for a causal model: trailing spaces
    of the context move to the continuation, the whole is tokenized, and the continuation is what follows
    the context's own tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        return _start(tokenizer), _ids(tokenizer, continuation)
    whole, ctx = _ids(tokenizer, context + continuation), _ids(tokenizer, context)
    cont = whole[len(ctx):]
    if whole[: len(ctx)] != ctx or not cont:  # a merge across the boundary: score the parts apart
        cont = _ids(tokenizer, continuation, specials=False)
    return ctx, cont


def _prompt(task: Task, ex: Example, tokenizer) -> tuple[list[int], list[str]]:
    """The prompt's ids (and the stop strings a chat template needs): a chat up to its last assistant turn
    (or to its end, for a multiple-choice chat), the context as a user turn when the task is in chat mode,
    else the context as plain text."""
    if ex.messages:
        turns = [i for i, msg in enumerate(ex.messages) if msg["role"] == "assistant"]
        return chat_prompt(tokenizer, ex.messages[: turns[-1]] if turns and not ex.choices else ex.messages)
    if task.chat:
        return chat_prompt(tokenizer, [{"role": "user", "content": task.context(ex)}])
    return _ids(tokenizer, task.context(ex)), []


def requests_for(task: Task, tokenizer) -> list[dict]:
    out = []
    for ex in task.examples:
        rid = f"{task.name}/{ex.id}"
        if task.kind == "generate":
            ids, extra = _prompt(task, ex, tokenizer)
            out.append({"rid": rid, "kind": "generate", "ids": ids, "max_tokens": task.max_tokens,
                        "stop": list(task.stop) + extra})
            if "perplexity" in task.metrics:
                # a template's answer turn starts bare; the default one writes "Assistant: <answer>"
                lead = "" if (task.chat or ex.messages) and has_template(tokenizer) else " "
                out.append({"rid": f"{rid}/ppl", "kind": "score", "ctx": ids,
                            "cont": _ids(tokenizer, lead + ex.references()[0].strip(), specials=False)})
        elif task.kind == "choice":
            out += [{"rid": f"{rid}/{j}", "kind": "score", "ctx": ctx, "cont": cont}
                    for j, (ctx, cont) in enumerate(_choice_pairs(task, ex, tokenizer))]
        elif task.kind == "bias":
            ctx = _context(tokenizer, ex.context)
            conts = [*ex.pair, *(ex.choices or [])]
            out += [{"rid": f"{rid}/{j}", "kind": "score", "ctx": ctx, "cont": _ids(tokenizer, c, specials=False)}
                    for j, c in enumerate(conts)]
    for canary in task.canaries:
        out += _canary_requests(task, canary, tokenizer)
    return out


def _choice_pairs(task: Task, ex: Example, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(context ids, choice ids) per choice: in a chat, each choice is the assistant's bare answer."""
    if task.chat or ex.messages:
        ctx = _prompt(task, ex, tokenizer)[0]
        return [(ctx, _ids(tokenizer, c.strip(), specials=False)) for c in ex.choices]
    text = task.context(ex)
    return [encode_pair(tokenizer, text, task.target_delimiter + c) for c in ex.choices]


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
    """Run requests on a backend: ``{rid: {"text"} | {"logprob", "greedy", "tokens"}}``. Generation goes in
    groups of the same settings, each distinct prompt once (the backend batches them); scoring in one call
    (the backend sorts by length and shares a forward pass between requests that can). ``progress(n)``,
    when given, is told how many are done as they finish."""
    results: dict[str, dict] = {}
    generate: dict[tuple, list[dict]] = defaultdict(list)
    scoring = []
    for r in requests:
        if r["kind"] == "generate":
            generate[(r["max_tokens"], tuple(r["stop"]))].append(r)
        else:
            scoring.append(r)
    done = 0

    def tell(n: int) -> None:
        if progress:
            progress(done + n)

    for (max_tokens, stop), group in generate.items():
        prompts = list({tuple(r["ids"]): None for r in group})  # the same prompt is generated once (greedy)
        texts = dict(zip(prompts, backend.generate([list(p) for p in prompts], max_tokens, list(stop),
                                                   batch_size=batch_size, progress=tell)))
        results.update({r["rid"]: {"text": texts[tuple(r["ids"])]} for r in group})
        done += len(group)
    if scoring:
        scored = backend.loglikelihood([(r["ctx"], r["cont"]) for r in scoring], batch_size=batch_size,
                                       progress=tell)
        results.update({r["rid"]: {"logprob": lp, "greedy": g, "tokens": len(r["cont"])}
                        for r, (lp, g) in zip(scoring, scored)})
    tell(len(scoring))
    return results


# ---------------------------------------------------------------- scores

def score(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict], dict[str, Sample]]:
    """``(metrics, prediction rows, samples)`` of one task from its requests' results; ``samples`` holds
    what each metric is computed from per example, for its interval (:mod:`.intervals`)."""
    if task.kind == "generate":
        return _score_generation(task, results)
    if task.kind == "choice":
        return _score_choice(task, results)
    if task.kind == "bias":
        return (*_score_bias(task, results), {})
    return (*_score_canaries(task, results), {})


def _score_generation(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict], dict[str, Sample]]:
    preds = [results[f"{task.name}/{ex.id}"]["text"].strip() for ex in task.examples]
    refs = [ex.references() for ex in task.examples]
    wanted, per_example, samples = set(task.metrics), {}, {}
    rouges = tuple(k for k in ("rouge1", "rouge2", "rougeL") if k in wanted)
    if rouges:
        per_example.update(metrics.rouge_per_example(preds, refs, rouges))
    if wanted & {"exact_match", "f1"}:
        per_example["exact_match"] = [100 * metrics.exact_match(p, r) for p, r in zip(preds, refs)]
        per_example["f1"] = [100 * metrics.token_f1(p, r) for p, r in zip(preds, refs)]
    samples.update({k: Sample.mean(v) for k, v in per_example.items() if k in wanted})
    if wanted & {"bleu", "chrf"}:
        for k, (stats, from_stats) in metrics.sacrebleu_stats(preds, refs, task.korean_target).items():
            if k in wanted:
                samples[k] = Sample.of_stats(stats, from_stats)
    if "perplexity" in wanted:
        scored = [results[f"{task.name}/{ex.id}/ppl"] for ex in task.examples]
        samples["perplexity"] = Sample.of_stats([[s["logprob"], s["tokens"]] for s in scored], _perplexity)
    out = {k: _full(sample) for k, sample in samples.items()}
    out["examples"] = len(preds)
    rows = [{"task": task.name, "id": ex.id, "prompt": ex.prompt if ex.prompt is not None else ex.messages,
             "prediction": p, "reference": ex.reference, **{k: v[i] for k, v in per_example.items() if k in wanted}}
            for i, (ex, p) in enumerate(zip(task.examples, preds))]
    return out, rows, samples


def _perplexity(summed: np.ndarray) -> np.ndarray:
    return np.exp(-summed[:, 0] / np.maximum(1, summed[:, 1]))


def _full(sample: Sample) -> float:
    """The metric on every example once."""
    return float(sample.at(np.arange(len(sample))[None, :])[0])


def _score_choice(task: Task, results: dict[str, dict]) -> tuple[dict, list[dict], dict[str, Sample]]:
    """lm-evaluation-harness's multiple-choice metrics: ``acc`` (the most likely choice is the gold one) and
    ``acc_norm`` (the same on log-likelihood divided by the choice's length in characters)."""
    acc, acc_norm, predicted, rows = [], [], [], []
    for ex in task.examples:
        lps = [results[f"{task.name}/{ex.id}/{j}"]["logprob"] for j in range(len(ex.choices))]
        best = int(np.argmax(lps))
        best_norm = int(np.argmax(np.array(lps) / np.array([float(len(c)) for c in ex.choices])))
        acc.append(float(best == ex.answer))
        acc_norm.append(float(best_norm == ex.answer))
        predicted.append(best)
        rows.append({"task": task.name, "id": ex.id, "prompt": ex.prompt if ex.prompt is not None else ex.messages,
                     "prediction": ex.choices[best], "reference": ex.choices[ex.answer], "logprobs": lps,
                     "acc": acc[-1], "acc_norm": acc_norm[-1]})
    classes = max(len(ex.choices) for ex in task.examples)
    samples = {"acc": Sample.mean(acc), "acc_norm": Sample.mean(acc_norm),
               "f1": Sample.of_stats(metrics.class_counts(predicted, [ex.answer for ex in task.examples], classes),
                                     metrics.macro_f1)}
    samples = {k: v for k, v in samples.items() if k in task.metrics}
    out = {k: _full(sample) for k, sample in samples.items()}
    out["examples"] = len(predicted)
    return out, rows, samples


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
