"""Fine-tuning data: chat formatting, the loss mask on answers only, truncation, and bad rows refused."""

import json

import pytest
from transformers import AutoTokenizer

from lmforge.finetune import data
from lmforge.tasks.examples import Example
from lmforge.tasks.jsonl import DataError, read_examples


@pytest.fixture(scope="module")
def tokenizer(hf_dir):
    return AutoTokenizer.from_pretrained(hf_dir)


def test_only_the_answer_and_its_end_are_targets(tokenizer):
    messages = data.conversation(Example(id="1", prompt="Name a river in Seoul.", reference=" 한강"))
    ids, mask = data.tokenize(tokenizer, messages)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == "User: Name a river in Seoul.\nAssistant: 한강\n"  # serving's default template
    targets = [t for t, k in zip(ids, mask) if k]
    assert tokenizer.decode(targets, skip_special_tokens=True).strip() == "한강"
    assert targets[-1] == tokenizer.eos_token_id and mask[-1] == 1  # and learns to stop
    prompt_ids, _ = __import__("lmforge.tasks.chat", fromlist=["chat_prompt"]).chat_prompt(tokenizer, messages[:1])
    assert ids[: len(prompt_ids)] == prompt_ids and not any(mask[: len(prompt_ids)])  # served the same way


def test_every_assistant_turn_of_a_chat_is_a_target(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Goodbye."}]
    ids, mask = data.tokenize(tokenizer, messages)
    runs, current = [], []
    for t, k in zip(ids, mask):
        if k:
            current.append(t)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in runs if r]
    assert texts == ["Hello.", "Goodbye."]


def test_long_contexts_lose_their_middle_and_answers_that_cannot_fit_are_left_out():
    ids, mask = list(range(100)), [0] * 90 + [1] * 10
    fitted_ids, fitted_mask = data.fit(ids, mask, 40, pad_id=0)
    assert len(fitted_ids) == 40 and fitted_ids[:10] == list(range(10)) and fitted_ids[-10:] == list(range(90, 100))
    assert sum(fitted_mask) == 10
    assert data.fit(list(range(100)), [0] * 50 + [1] * 50, 40, pad_id=0) is None
    short_ids, short_mask = data.fit([5, 6, 7], [0, 1, 1], 6, pad_id=0)
    assert short_ids == [5, 6, 7, 0, 0, 0] and short_mask == [0, 1, 1, 0, 0, 0]  # padding is never a target


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "no answer"}, "not an object",
            {"messages": [{"role": "user", "content": "hi"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    with pytest.raises(DataError) as err:
        read_examples(str(path))
    message = str(err.value)
    assert "4 unusable rows" in message
    for line in ("line 2:", "line 3:", "line 4: messages: a chat without an assistant turn", "line 6:"):
        assert line in message, line
    assert "line 1:" not in message and "line 5:" not in message


def test_builtin_task_data_and_its_held_out_split_never_meet():
    from lmforge.tasks.builtin import TASKS
    from lmforge.tasks.examples import take

    train, val = data.load_examples("xsum", None, 0.1, None)
    held_out = {e.id for e in take(TASKS["xsum"].load(), "test")}
    assert train and val and not ({e.id for e in train + val} & held_out)
    assert len(held_out) / 1000 == pytest.approx(0.2, abs=0.04)


def test_the_cli_stops_on_bad_rows_before_anything_is_written(tmp_path, hf_dir):
    import subprocess
    import sys
    from pathlib import Path

    bad = tmp_path / "chat.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    out = tmp_path / "tuned"
    lmforge = Path(sys.executable).parent / "lmforge"
    done = subprocess.run([str(lmforge), "finetune", f"data={bad}", f"model.init_from={hf_dir}", f"output={out}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "line 2: messages: a chat without an assistant turn" in done.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()  # stopped before training began


def test_several_sources_mix_in_proportion_and_each_gives_val(tmp_path):
    for name, n in (("a", 10), ("b", 30)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": f"{name}{i}", "response": "x"}) + "\n"
                                                        for i in range(n)))
    train, val = data.load_examples([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], None, 0.1, 8)
    assert [e.prompt for e in val] == ["a0", "b0", "b1", "b2"]  # each source's own held-back share
    assert sorted(e.prompt[0] for e in train) == ["a"] * 2 + ["b"] * 6  # 9:27, so a prefix takes 1 in 4 from a
    with pytest.raises(DataError, match="no answers to learn"):
        data.load_examples("bias", None, 0.1, None)
