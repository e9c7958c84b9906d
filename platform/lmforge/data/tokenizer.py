"""Byte-level BPE tokenizer training with HF ``tokenizers``, saved as an HF tokenizer dir.

Byte-level means every string, Korean and English alike, encodes without unknown tokens. The
post-processor puts ``<bos>`` before every encoded text, so training documents and serving prompts
start the same way; packing appends ``<eos>`` after each document.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
SPECIAL_TOKENS = [PAD, BOS, EOS]  # ids 0, 1, 2


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on an iterator of texts."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tok


def to_hf(tok: Tokenizer, model_max_length: int):
    """Wrap as ``PreTrainedTokenizerFast`` so ``AutoTokenizer.from_pretrained`` loads it."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side="left",  # generation pads prompts on the left
        clean_up_tokenization_spaces=False,
    )


def special_ids(tok: Tokenizer) -> dict[str, int | None]:
    """The pad, bos and eos ids of a tokenizer :func:`train_bpe` trained."""
    return {"pad": tok.token_to_id(PAD), "bos": tok.token_to_id(BOS), "eos": tok.token_to_id(EOS)}


def from_model(model_dir: str, out: str) -> tuple[Tokenizer, dict[str, int | None]]:
    """An HF model dir's own tokenizer, saved to ``out`` as it is (chat template included), and the ids
    packing uses: documents end with its eos token; pad is its pad token unless that is eos (as in many
    chat models, SmolLM2's among them), for the loss ignores every pad position and would never learn where
    a document ends: then another special token that text does not encode to, eos only when it has none."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model_dir)
    if not hf.is_fast or hf.eos_token_id is None:
        raise ValueError(f"tokenizer.from_model: {model_dir}'s tokenizer is not a fast tokenizer with an eos "
                         "token (packing needs a tokenizer.json and a token to end each document)")
    hf.save_pretrained(out)
    eos, bos = hf.eos_token_id, hf.bos_token_id
    spare = sorted(i for i, t in hf.added_tokens_decoder.items() if t.special and i not in (eos, bos))
    pad = hf.pad_token_id if hf.pad_token_id not in (None, eos) else (spare[0] if spare else eos)
    return hf.backend_tokenizer, {"pad": pad, "bos": bos, "eos": eos}
