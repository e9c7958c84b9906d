"""Fine-tuning examples as token rows with a loss mask: the training worker's input.

Each example becomes a conversation (a prompt/response pair is a user turn and an assistant turn),
rendered with the model's chat template, or the default template serving uses, so a model is trained
on the prompt format it will be served with. Only the assistant turns' tokens (and an end of
sequence after the last) are targets; the rest is context. A row longer than ``max_seq_len`` loses the
middle of its context; one whose answer alone does not fit is left out and counted. Rows are padded to
``max_seq_len``, the padding masked out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lmforge.tasks.builtin import TASKS
from lmforge.tasks.chat import DEFAULT_CHAT_TEMPLATE, has_template
from lmforge.tasks.examples import Example, take
from lmforge.tasks.jsonl import DataError, read_examples

HEAD_TOKENS = 64  # tokens kept from the start of a context that is cut (its instruction)


@dataclasses.dataclass
class Formatted:
    rows: list[tuple[list[int], list[int]]]  # (input_ids, loss_mask), each max_seq_len long
    dropped_too_long: int = 0
    truncated: int = 0


def load_examples(data: str | list[str], val_data: str | None, val_fraction: float, max_examples: int | None
                  ) -> tuple[list[Example], list[Example]]:
    """(train, val) examples from one source or several (built-in tasks' train splits, JSONL files), each
    source giving its share of val; every bad row is reported. Several sources are interleaved, so that
    ``max_examples`` takes from each alike."""
    train_parts, val_parts = [], []
    for source in [data] if isinstance(data, str) else data:
        examples = _source(source)
        cut = 0 if val_data else max(1, int(len(examples) * val_fraction))
        train_parts.append(examples[cut:])
        val_parts.append(examples[:cut])
    train = _interleave(train_parts)
    val = read_examples(val_data) if val_data else _interleave(val_parts)
    return (train[:max_examples] if max_examples else train), val


def read_sources(data: str | list[str]) -> list[Example]:
    """Every example of each source (a built-in task's train split, or a JSONL file), in order."""
    return [ex for source in ([data] if isinstance(data, str) else data) for ex in _source(source)]


def _source(source: str) -> list[Example]:
    if source in TASKS:
        task = TASKS[source]
        if task.kind not in ("generate", "choice"):
            raise DataError(f"data: task {source!r} ({task.kind}) has no answers to learn")
        return take(task.load(), "train")
    if Path(source).suffix in (".jsonl", ".json") or source.startswith("pkg://"):
        return read_examples(source)
    raise DataError(f"data: {source!r} is neither a JSONL file nor a task ({', '.join(TASKS)})")


def _interleave(parts: list[list[Example]]) -> list[Example]:
    """Round-robin over the sources, by position relative to each source's length."""
    keyed = [(i / len(part), n, ex) for n, part in enumerate(parts) for i, ex in enumerate(part)]
    return [ex for _, _, ex in sorted(keyed, key=lambda k: (k[0], k[1]))]


def conversation(ex: Example) -> list[dict]:
    if ex.messages:
        return ex.messages
    response = ex.choices[ex.answer] if ex.choices else ex.references()[0]
    return [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": response.strip()}]


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    template = None if has_template(tokenizer) else DEFAULT_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def tokenize(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """Ids of the rendered conversation and a mask that is 1 on the assistant turns' tokens."""
    text = _render(tokenizer, messages, False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            start = len(_render(tokenizer, messages[:i], True))
            spans.append((start, len(_render(tokenizer, messages[: i + 1], False))))
    enc = tokenizer(text, add_special_tokens=not has_template(tokenizer), return_offsets_mapping=True, verbose=False)
    ids = list(enc.input_ids)
    mask = [int(any(a <= s < b for a, b in spans) and e > s) for s, e in enc.offset_mapping]
    eos = tokenizer.eos_token_id
    if eos is not None and not any(t == eos and k for t, k in zip(ids, mask)):
        ids.append(eos)  # learn to stop after the answer
        mask.append(1)
    return ids, mask


def fit(ids: list[int], mask: list[int], max_seq_len: int, pad_id: int) -> tuple[list[int], list[int]] | None:
    """Cut the middle of the context to fit (None when the targets alone do not), then pad."""
    if len(ids) > max_seq_len:
        first_target = mask.index(1) if 1 in mask else len(mask)
        head = min(HEAD_TOKENS, max_seq_len // 4, first_target)
        tail = max_seq_len - head
        if len(ids) - first_target > tail:
            return None
        ids, mask = ids[:head] + ids[-tail:], mask[:head] + mask[-tail:]
    padding = max_seq_len - len(ids)
    return ids + [pad_id] * padding, mask + [0] * padding


def format_examples(tokenizer, examples: list[Example], max_seq_len: int) -> Formatted:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    out = Formatted([])
    for ex in examples:
        ids, mask = tokenize(tokenizer, conversation(ex))
        fitted = fit(ids, mask, max_seq_len, pad)
        if fitted is None:
            out.dropped_too_long += 1
            continue
        out.truncated += len(ids) > max_seq_len
        out.rows.append(fitted)
    return out


def write_rows(rows: list[tuple[list[int], list[int]]], out_dir: Path) -> Path:
    """A rows dir the training worker reads: ``input_ids`` and ``loss_mask`` columns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.table({"input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int32())),
                      "loss_mask": pa.array([r[1] for r in rows], pa.list_(pa.int8()))})
    pq.write_table(table, out_dir / "part-0.parquet")
    return out_dir
