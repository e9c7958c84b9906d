"""Data bias statistics (prepare's report): demographic terms per million words and occupations by the
gender they are named with, in English and Korean; a planted skew shows, a balanced corpus does not."""

from collections import Counter

from lmforge.data import bias, report

OCCUPATIONS_EN = ["engineer", "nurse", "teacher", "doctor"]
OCCUPATIONS_KO = ["엔지니어", "간호사", "교사", "의사"]


def _corpus(skewed: bool) -> list[str]:
    """40 documents; skewed: engineers always men and nurses always women (in both languages), teachers
    and doctors balanced; else every occupation half and half."""
    docs = []
    for i in range(40):
        en, ko = OCCUPATIONS_EN[i % 4], OCCUPATIONS_KO[i % 4]
        male = {"engineer": True, "nurse": False}.get(en, i % 8 < 4) if skewed else i % 8 < 4
        docs.append(f"The {en} finished {'his' if male else 'her'} report early, and then {'he' if male else 'she'} "
                    f"went home. The weather was mild. 그 {ko}는 {'남자' if male else '여자'}였다. 날씨가 맑았다.")
    return docs


def _summary(docs: list[str]) -> dict:
    words, terms, pairs = 0, Counter(), Counter()
    for d in docs:
        c = bias.count(d)
        words, terms, pairs = words + c["words"], terms + c["terms"], pairs + c["occupations"]
    return bias.summarize(words, terms, pairs)


def test_a_planted_occupation_skew_shows_in_the_report_and_a_balanced_corpus_shows_none():
    skewed, balanced = _summary(_corpus(skewed=True)), _summary(_corpus(skewed=False))
    assert sorted(skewed["skewed_occupations"]) == ["engineer", "nurse"]
    # one sentence in English and one in Korean per document (a sentence counts once however many words)
    assert skewed["occupations_with_gender"]["engineer"] == {"male": 20, "female": 0, "female_share": 0.0}
    assert balanced["skewed_occupations"] == []
    assert all(0.4 <= v["female_share"] <= 0.6 for v in balanced["occupations_with_gender"].values())
    text = "\n".join(report._bias(skewed))
    assert "skewed: engineer, nurse**" in text and "| nurse (skewed) | 0 | 20 | 1.0 |" in text
    assert "none skewed" in "\n".join(report._bias(balanced))


def test_terms_are_counted_per_million_words_in_english_and_korean_with_particles():
    c = bias.count("Muslims and Christians met. 불교도와 기독교인들이 만났다. The mother and her son. 어머니의 딸.")
    assert c["terms"] == Counter({"religion:muslim": 1, "religion:christian": 2, "religion:buddhist": 1,
                                  "gender:female": 4, "gender:male": 1})
    summary = bias.summarize(c["words"], c["terms"], c["occupations"])
    assert summary["per_million_words"]["religion"]["christian"] == round(2e6 / c["words"], 1)
    assert bias.count("그것은 형태가 이상하다. The black and white photo.")["terms"] == Counter()  # no false hits
