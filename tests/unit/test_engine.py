"""The continuous-batching engine on a tiny exported model: joins, leaves, limits, logprobs (no Ray)."""

import asyncio

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from lmforge.generate.async_engine import AsyncEngine
from lmforge.generate.engine import ContextLengthError, Engine, EngineFullError, SamplingParams
from lmforge.generate.onnx_model import OnnxModel

PROMPTS = ["The river", "서울은 대한민국의", "A much longer prompt that has a few more tokens in it than the others"]


@pytest.fixture(scope="module")
def model(onnx_dir):
    return OnnxModel(onnx_dir)


def _ids(model, text):
    return model.tokenizer(text).input_ids


def _run(engine: Engine, max_steps: int = 500) -> dict[str, list]:
    outs: dict[str, list] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            break
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    return outs


def _tokens(outs) -> list[int]:
    return [t for o in outs for t in o.token_ids]


def _alone(model, prompt: str, params: SamplingParams) -> list[int]:
    engine = Engine(model, max_running=1)
    engine.add("x", _ids(model, prompt), params)
    return _tokens(_run(engine)["x"])


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=12, temperature=0, ignore_eos=True),
                                    SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=7,
                                                   ignore_eos=True)], ids=["greedy", "seeded"])
def test_requests_joining_mid_stream_get_the_tokens_they_get_alone(model, params):
    """A request admitted while others decode (its own slot of the cache, at its own positions) gives
    exactly the tokens it gives alone; so do the ones already running."""
    engine = Engine(model, max_running=8)
    engine.add("0", _ids(model, PROMPTS[0]), params)
    outs: dict[str, list] = {}
    for step in range(40):
        if step == 3:
            engine.add("1", _ids(model, PROMPTS[1]), params)
        if step == 5:
            engine.add("2", _ids(model, PROMPTS[2]), params)
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    for i, prompt in enumerate(PROMPTS):
        assert _tokens(outs[str(i)]) == _alone(model, prompt, params), i
    assert not engine.has_work() and not engine.running
    # every finished sequence gave its slot back (a slot kept busy would leak one per request)
    assert not any(busy for pool in engine.pools for busy in pool.busy)


def test_at_most_max_running_and_the_rest_wait(model):
    engine = Engine(model, max_running=2)
    for i in range(5):
        engine.add(str(i), _ids(model, PROMPTS[i % 3]), SamplingParams(max_tokens=4, ignore_eos=True))
    seen = []
    while engine.has_work():
        engine.step()
        seen.append((engine.num_running, engine.num_waiting))
    assert max(r for r, _ in seen) == 2 and seen[0] == (2, 3)
    assert seen[-1] == (0, 0)


def test_a_long_prompt_is_prefilled_in_chunks_while_running_streams_keep_decoding(model):
    """With ``max_prefill_tokens`` 4, a long prompt takes several steps to prefill; a stream already
    running gets a token at every one of them (no stall for the prompt's whole length), and the long
    prompt's tokens are those it gets prefilled at once."""
    engine = Engine(model, max_running=4, max_prefill_tokens=4)
    long, short = _ids(model, PROMPTS[2]), _ids(model, PROMPTS[0])
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    engine.add("short", short[:4], SamplingParams(max_tokens=40, ignore_eos=True))
    engine.step()
    engine.add("long", long, params)
    chunks = -(-len(long) // 4)
    for step in range(chunks):
        ids = [o.request_id for o in engine.step() if o.token_ids]
        assert "short" in ids, step
        assert ("long" in ids) == (step == chunks - 1), step
    outs = _run(engine)
    rest = [t for o in outs["long"] for t in o.token_ids]
    once = Engine(model, max_running=1, max_prefill_tokens=1000)
    once.add("x", long, params)
    assert len(rest) == 5 and _tokens(_run(once)["x"])[1:] == rest


def test_a_prompt_sharing_a_prefix_with_a_finished_one_reuses_its_cache(model):
    """The second prompt starts with the first one's tokens: only the rest is computed (hit rate), and its
    tokens are those a fresh engine gives."""
    first = _ids(model, PROMPTS[2])
    second = first + _ids(model, " and then some more")
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    engine = Engine(model, max_running=2)
    engine.add("a", first, params)
    _run(engine)
    engine.add("b", second, params)
    got = _tokens(_run(engine)["b"])
    assert engine.prefix_hit_rate == pytest.approx((len(first)) / (len(first) + len(second)), abs=0.02)
    fresh = Engine(model, max_running=2)
    fresh.add("b", second, params)
    assert got == _tokens(_run(fresh)["b"]) and fresh.prefix_hit_rate == 0


def test_a_prompt_sharing_a_prefix_with_a_running_one_copies_it_and_both_keep_their_tokens(model):
    """``b`` starts with all of ``a``'s prompt while ``a`` still decodes in its slot: ``b``'s prefill copies
    those positions from ``a``'s slot (from a slot of the other pool too) instead of computing them, and
    both get the tokens and logprobs they get alone (a copy left out, from the wrong positions or over
    ``a``'s row changes them)."""
    first = _ids(model, PROMPTS[2])
    second = first + _ids(model, " and then some more")
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, logprobs=0)

    def alone(prompt):
        engine = Engine(model, max_running=1)
        engine.add("x", prompt, params)
        return _run(engine)["x"]

    for short_context in (64, 42):  # 42: ``b`` (41 + 8 tokens) needs the long slot, ``a`` holds a short one
        engine = Engine(model, max_running=2, short_context=short_context, long_slots=1)
        engine.add("a", first, params)
        outs = {"a": engine.step()}
        engine.add("b", second, params)
        for key, got in _run(engine).items():
            outs.setdefault(key, []).extend(got)
        assert engine.prefix_hit_rate == pytest.approx(len(first) / (len(first) + len(second)), abs=0.02)
        for key, prompt in (("a", first), ("b", second)):
            want = alone(prompt)
            assert _tokens(outs[key]) == _tokens(want), (short_context, key)
            logprobs = [lp.logprob for o in outs[key] for lp in o.logprobs]
            assert np.allclose(logprobs, [lp.logprob for o in want for lp in o.logprobs], atol=1e-5), key


def test_memory_is_fixed_at_start_and_a_full_queue_refuses(model):
    """Slots are allocated once (short ones, and one of the full context); a request that needs more than a
    short slot waits for the long one without holding up the short ones behind it; past ``max_waiting`` a
    request is refused, not queued forever."""
    engine = Engine(model, max_running=3, short_context=16, long_slots=1, max_waiting=2)
    assert [(p.slots, p.capacity) for p in engine.pools] == [(3, 16), (1, 64)]
    assert engine.cache_bytes == model.bytes_per_token * (3 * 16 + 64)
    long = SamplingParams(max_tokens=30, ignore_eos=True)
    engine.add("long1", _ids(model, PROMPTS[0]), long)
    engine.add("long2", _ids(model, PROMPTS[0]), long)
    engine.step()
    assert engine.num_running == 1 and engine.num_waiting == 1  # one long slot
    assert engine.room() == 2 + 3 - 1  # max_waiting + free slots - waiting
    for i in range(4):
        engine.add(f"more{i}", _ids(model, PROMPTS[0]), SamplingParams(max_tokens=2))
    with pytest.raises(EngineFullError):
        engine.add("over", _ids(model, PROMPTS[0]), SamplingParams(max_tokens=2))
    first = engine.step()  # the short ones start at once, beside long1; long2 still waits
    assert {o.request_id for o in first if o.token_ids} >= {"more0", "more1", "more2"}
    assert [s.id for s in engine.waiting] == ["long2", "more3"]
    outs = _run(engine)
    assert {k for k, v in outs.items() if v[-1].finish_reason} == {"long1", "long2", "more0", "more1", "more2",
                                                                     "more3"}


def test_abort_frees_the_slot_at_the_next_step(model):
    engine = Engine(model, max_running=1)
    engine.add("a", _ids(model, PROMPTS[0]), SamplingParams(max_tokens=40, ignore_eos=True))
    engine.add("b", _ids(model, PROMPTS[1]), SamplingParams(max_tokens=3, ignore_eos=True))
    engine.step()
    engine.step()
    engine.abort("a")
    outs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outs if o.request_id == "a"] == [("a", "abort")]
    assert [s.id for s in engine.running] == ["b"]  # admitted in the same step


def test_context_is_checked_before_a_request_is_accepted(model):
    engine = Engine(model)
    with pytest.raises(ContextLengthError, match="maximum context length is 64 tokens"):
        engine.add("x", list(range(3, 60)), SamplingParams(max_tokens=10))
    with pytest.raises(ContextLengthError):
        engine.add("y", [], SamplingParams(max_tokens=1))
    assert not engine.has_work()


def test_stop_strings_cut_the_text_and_finish(model):
    full = "".join(o.text for o in _run_one(model, SamplingParams(max_tokens=10, ignore_eos=True)))
    assert len(full) > 4
    stop = full[2:4]
    outs = _run_one(model, SamplingParams(max_tokens=10, ignore_eos=True, stop=[stop]))
    assert "".join(o.text for o in outs) == full[: full.find(stop)] and outs[-1].finish_reason == "stop"


def test_a_stop_string_across_tokens_is_never_streamed_in_part(model):
    """OpenAI's contract: the text ends before the stop string, streamed or not. A stop that starts inside
    one token and ends in the next must not have its start sent before the next token shows it is a stop;
    a partial match that never completes is sent when the completion ends."""
    deltas = [o.text for o in _run_one(model, SamplingParams(max_tokens=16, ignore_eos=True))]
    full = "".join(deltas)
    starts = [sum(len(d) for d in deltas[:i]) for i in range(len(deltas))]
    stop = next(s for i in range(len(deltas) - 1) if deltas[i] and deltas[i + 1]
                for s in [deltas[i][-1] + deltas[i + 1][:2]] if full.find(s) == starts[i] + len(deltas[i]) - 1)
    outs = _run_one(model, SamplingParams(max_tokens=16, ignore_eos=True, stop=[stop]))
    assert "".join(o.text for o in outs) == full[: full.find(stop)] and outs[-1].finish_reason == "stop"
    never = _run_one(model, SamplingParams(max_tokens=16, ignore_eos=True, stop=[full[-1] + "\x00never"]))
    assert "".join(o.text for o in never) == full and never[-1].finish_reason == "length"


def _run_one(model, params, prompt=PROMPTS[0]):
    engine = Engine(model)
    engine.add("x", _ids(model, prompt), params)
    return _run(engine)["x"]


def test_logprobs_and_echoed_prompt_logprobs_equal_pytorch(model, hf_dir):
    """Echo with logprobs: every prompt token's logprob given the ones before it (the first has none),
    then each new token's, equal to the model's own log-softmax in PyTorch."""
    ids = _ids(model, PROMPTS[2])
    outs = _run_one(model, SamplingParams(max_tokens=5, temperature=0, logprobs=3, prompt_logprobs=True,
                                          ignore_eos=True), PROMPTS[2])
    prompt_lp = outs[0].prompt_logprobs
    generated = _tokens(outs)
    token_lp = [lp for o in outs for lp in (o.logprobs or [])]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([ids + generated])).logits[0].double(), -1)
    want_prompt = [logp[j - 1, ids[j]].item() for j in range(1, len(ids))]
    assert prompt_lp[0] is None and len(prompt_lp) == len(ids)
    assert np.allclose([lp.logprob for lp in prompt_lp[1:]], want_prompt, atol=1e-3)
    want_new = [logp[len(ids) - 1 + k, t].item() for k, t in enumerate(generated)]
    assert np.allclose([lp.logprob for lp in token_lp], want_new, atol=1e-3)
    top = token_lp[0].top
    assert len(top) == 3 and top[0][0] == generated[0]  # greedy: the chosen token is the most likely
    assert [t for t, _ in top] == torch.topk(logp[len(ids) - 1], 3).indices.tolist()


def test_max_tokens_zero_scores_the_prompt_only(model):
    outs = _run_one(model, SamplingParams(max_tokens=0, prompt_logprobs=True, logprobs=0))
    assert len(outs) == 1 and outs[0].token_ids == [] and outs[0].finish_reason == "length"
    assert len(outs[0].prompt_logprobs) == len(_ids(model, PROMPTS[0]))


def test_korean_text_streams_whole_characters(model):
    """Byte-level BPE splits a Hangul syllable over tokens: a delta never ends in half of one (held back
    until the rest comes; a random model may leave bytes that never complete, flushed at the end)."""
    outs = _run_one(model, SamplingParams(max_tokens=20, temperature=1.0, seed=3, ignore_eos=True), PROMPTS[1])
    assert not any(o.text.endswith("\ufffd") for o in outs[:-1])
    assert "".join(o.text for o in outs) == model.tokenizer.decode(_tokens(outs), skip_special_tokens=True)


def test_async_engine_serves_concurrent_callers_and_aborts_the_ones_that_leave(model):
    async def main():
        engine = AsyncEngine(Engine(model, max_running=4))
        params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)

        async def collect(i):
            return [t async for out in engine.generate(str(i), _ids(model, PROMPTS[i]), params)
                    for t in out.token_ids]

        results = await asyncio.gather(*(collect(i) for i in range(3)))
        gen = engine.generate("leaver", _ids(model, PROMPTS[0]), SamplingParams(max_tokens=50, ignore_eos=True))
        await gen.__anext__()
        await gen.aclose()  # the client went away
        for _ in range(100):
            if not engine.engine.has_work():
                break
            await asyncio.sleep(0.02)
        with pytest.raises(ContextLengthError):
            async for _ in engine.generate("big", list(range(3, 60)), SamplingParams(max_tokens=10)):
                pass
        engine.stop()
        return results, engine.engine.has_work()

    results, busy = asyncio.run(main())
    assert results == [_alone(model, p, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
                       for p in PROMPTS]
    assert not busy  # the abandoned request's slot was freed


def test_a_refused_request_fails_alone_and_any_seed_works(model):
    async def main():
        engine = AsyncEngine(Engine(model))
        params = SamplingParams(max_tokens=3, temperature=1.0, seed=-1)  # OpenAI lets seeds be negative
        got = [t async for out in engine.generate("a", _ids(model, PROMPTS[0]), params) for t in out.token_ids]
        add = engine.engine.add

        def refusing_add(request_id, ids, p, adapter=None):  # a request the engine thread itself refuses
            if request_id == "bad":
                raise ValueError("refused")
            add(request_id, ids, p, adapter)

        engine.engine.add = refusing_add
        with pytest.raises(ValueError, match="refused"):
            async for _ in engine.generate("bad", _ids(model, PROMPTS[0]), params):
                pass
        again = [t async for out in engine.generate("b", _ids(model, PROMPTS[0]), params) for t in out.token_ids]
        engine.stop()
        return got, again

    got, again = asyncio.run(main())
    assert len(got) >= 1 and got == again  # same seed, same tokens; the engine survived the bad request


@pytest.mark.parametrize("span", [2, 3])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_stop_strings_spanning_tokens_never_reach_the_text(model, span, where):
    """A stop string made of the end of one token's text, whole tokens, and the start of another's (2 or 3
    tokens), at the start, middle or end of the completion: the deltas, joined (what a stream sends, and
    what a non-streamed response holds), end right before it; no delta ever carried part of it."""
    pieces = [o.text for o in _run_one(model, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))]
    starts = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces) + 1)]
    full = "".join(pieces)
    candidates = [i for i in range(len(pieces) - span + 1) if all(len(p) >= 2 for p in pieces[i:i + span])]
    i = {"start": candidates[0], "middle": candidates[len(candidates) // 2], "end": candidates[-1]}[where]
    stop = full[starts[i] + 1: starts[i + span] - 1]  # cuts into the first and last of the span
    cut = full.find(stop)
    outs = _run_one(model, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True, stop=[stop]))
    deltas = [o.text for o in outs]
    assert "".join(deltas) == full[:cut] and outs[-1].finish_reason == "stop"
    assert all(stop[:2] not in d for d in deltas)


def test_a_prompt_at_the_context_limit_beside_15_short_streams_completes_in_the_stated_memory(model):
    """The long prompt takes the long slot and is prefilled in chunks; the 15 short streams run in short
    slots meanwhile; every request completes and the cache is the size stated at start."""
    engine = Engine(model, max_running=15, short_context=24, long_slots=1, max_prefill_tokens=16)
    stated = engine.cache_bytes
    long = list(range(3, 3 + model.max_positions - 4))
    engine.add("long", long, SamplingParams(max_tokens=4, ignore_eos=True))
    for i in range(15):
        engine.add(f"s{i}", _ids(model, PROMPTS[0]), SamplingParams(max_tokens=8, ignore_eos=True))
    outs = _run(engine)
    assert len(outs) == 16 and all(o[-1].finish_reason == "length" for o in outs.values())
    assert len(_tokens(outs["long"])) == 4 and engine.cache_bytes == stated
    assert sum(b.nbytes for p in engine.pools for b in p.buffers.values()) == stated


def test_prompts_admitted_together_share_one_prefill_call_and_get_their_own_tokens(model):
    """Three fresh prompts of different lengths in neighbouring slots: one graph call prefills them all
    (right-padded, each row at its own length), and each gets exactly the tokens it gets alone."""
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    engine = Engine(model, max_running=4)
    calls = []

    def counting_run_rows(cache, rows, **kw):
        calls.append((len(rows), max(len(tokens) for _, tokens, _, _ in rows)))  # (rows, width) of one call
        return model.run_rows(cache, rows, **kw)

    engine.model = type("Counted", (), {"__getattr__": lambda self, name: getattr(model, name),
                                        "run_rows": staticmethod(counting_run_rows)})()
    for i, prompt in enumerate(PROMPTS):
        engine.add(str(i), _ids(model, prompt), params)
    engine.step()
    assert calls == [(3, max(len(_ids(model, p)) for p in PROMPTS))]
    outs = _run(engine)
    for i, prompt in enumerate(PROMPTS):
        assert _tokens(outs[str(i)]) == _alone(model, prompt, params)[1:], i


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                           "maximum": 99},
                                           "tag": {"enum": ["river", "서울"]}},
          "required": ["ok", "n", "tag"], "additionalProperties": False}


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_constrained_rows_follow_their_grammar_beside_free_ones(model, temperature):
    """A random model left alone writes noise; constrained, each row's text is in its own language (a JSON
    schema, a regex, a choice), decided in one batched step beside a free row whose tokens do not change,
    and the sequence ends when the grammar is complete (no end-of-sequence token needed)."""
    import json
    import re

    import jsonschema

    from lmforge.generate.constraints import Constraint

    constraints = {"schema": Constraint("json_schema", json.dumps(SCHEMA)),
                   "regex": Constraint("regex", r"[0-9]{3}-[a-z]{2}"),
                   "choice": Constraint("choice", json.dumps(["yes", "no", "아마도"])),
                   "object": Constraint("json_object")}
    engine = Engine(model, max_running=8)
    free = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)
    engine.add("free", _ids(model, PROMPTS[0]), free)
    for i in range(2):  # two of each: rows of one grammar keep their own state
        for name, c in constraints.items():
            engine.add(f"{name}{i}", _ids(model, PROMPTS[i]), SamplingParams(max_tokens=40, temperature=temperature,
                                                                             seed=i, constraint=c))
    outs = _run(engine)
    text = {k: "".join(o.text for o in v) for k, v in outs.items()}
    for i in range(2):
        jsonschema.validate(json.loads(text[f"schema{i}"]), SCHEMA)
        assert re.fullmatch(r"[0-9]{3}-[a-z]{2}", text[f"regex{i}"]), text[f"regex{i}"]
        assert text[f"choice{i}"] in ("yes", "no", "아마도")
        assert outs[f"choice{i}"][-1].finish_reason == "stop"
        assert isinstance(json.loads(text[f"object{i}"]) if outs[f"object{i}"][-1].finish_reason == "stop" else {},
                          dict)
    assert _tokens(outs["free"]) == _alone(model, PROMPTS[0], free)


def test_a_constraint_that_does_not_compile_is_refused_naming_it(model):
    from lmforge.generate.constraints import Constraint, ConstraintError

    engine = Engine(model, max_running=2)
    for c in (Constraint("json_schema", '{"type": "frobnicate"}', param="response_format"),
              Constraint("regex", "a(b", param="guided_regex"), Constraint("grammar", "start: nothing_here")):
        with pytest.raises(ConstraintError) as e:
            engine.add("x", _ids(model, PROMPTS[0]), SamplingParams(constraint=c))
        assert e.value.param == c.param
    assert not engine.has_work()
