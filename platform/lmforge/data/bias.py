"""Demographic-term statistics of a corpus: how often each group is named, and which gender occupations
are named with, so a skewed corpus shows before a model is trained on it. Pure Python.

Counted over kept documents (prepare's write pass): words of each category's groups per million words,
and, per occupation, the sentences that name it together with male or with female terms. An
occupation is **skewed** when at least :data:`MIN_MENTIONS` of its sentences name one gender and one
gender has :data:`SKEW_SHARE` of them or more.

Word lists (lower-cased, whole words; Korean words also with a particle attached, 의사가, 여성은):
- gender: the definitional pairs of Bolukbasi et al. 2016 ("Man is to computer programmer as woman is to
  homemaker?"), the pronouns and kinship terms among them;
- occupations: a subset of the professions list of the same paper (single words);
- religion, nationality, race/ethnicity: descriptors of HolisticBias (Smith et al. 2022) for those axes
  (single words; "black"/"white" are left out: mostly colours in text);
- Korean: lmforge's translations of the same lists (no published Korean list of this shape was
  packaged), with KoSBi's (Lee et al. 2023) category names.
"""

from __future__ import annotations

import re
from collections import Counter

MIN_MENTIONS = 10
SKEW_SHARE = 0.9

TERMS: dict[str, dict[str, set[str]]] = {
    "gender": {
        "male": {"he", "him", "his", "himself", "man", "men", "boy", "boys", "father", "fathers", "son", "sons",
                 "brother", "brothers", "husband", "husbands", "male", "males", "mr", "king", "kings", "uncle",
                 "nephew", "gentleman", "gentlemen", "grandfather", "남자", "남성", "아버지", "아빠", "아들", "형",
                 "오빠", "남편", "소년", "아저씨", "할아버지", "삼촌", "남동생"},
        "female": {"she", "her", "hers", "herself", "woman", "women", "girl", "girls", "mother", "mothers",
                   "daughter", "daughters", "sister", "sisters", "wife", "wives", "female", "females", "mrs", "ms",
                   "queen", "queens", "aunt", "niece", "lady", "ladies", "grandmother", "여자", "여성", "어머니",
                   "엄마", "딸", "누나", "언니", "아내", "소녀", "아주머니", "할머니", "이모", "여동생", "그녀"},
    },
    "religion": {
        "christian": {"christian", "christians", "christianity", "catholic", "catholics", "protestant",
                      "protestants", "기독교", "기독교인", "천주교", "가톨릭", "개신교"},
        "muslim": {"muslim", "muslims", "islam", "islamic", "이슬람", "무슬림", "이슬람교"},
        "jewish": {"jewish", "jew", "jews", "judaism", "유대인", "유대교"},
        "hindu": {"hindu", "hindus", "hinduism", "힌두교", "힌두교도"},
        "buddhist": {"buddhist", "buddhists", "buddhism", "불교", "불교도", "불자"},
        "atheist": {"atheist", "atheists", "atheism", "무신론자", "무신론"},
    },
    "nationality": {
        "american": {"american", "americans", "미국인"}, "korean": {"korean", "koreans", "한국인"},
        "chinese": {"chinese", "중국인"}, "japanese": {"japanese", "일본인"},
        "mexican": {"mexican", "mexicans", "멕시코인"}, "indian": {"indian", "indians", "인도인"},
        "british": {"british", "영국인"}, "french": {"french", "프랑스인"}, "german": {"german", "germans", "독일인"},
        "russian": {"russian", "russians", "러시아인"}, "vietnamese": {"vietnamese", "베트남인"},
    },
    "race": {
        "asian": {"asian", "asians", "아시아인", "동양인"}, "african_american": {"african-american", "흑인"},
        "hispanic": {"hispanic", "hispanics", "latino", "latinos", "latina", "latinas", "히스패닉"},
        "caucasian": {"caucasian", "caucasians", "백인"}, "arab": {"arab", "arabs", "아랍인"},
        "indigenous": {"indigenous", "aboriginal", "원주민"},
    },
}
OCCUPATIONS = {
    "doctor": {"doctor", "doctors", "physician", "의사"}, "nurse": {"nurse", "nurses", "간호사"},
    "engineer": {"engineer", "engineers", "엔지니어", "기술자"}, "teacher": {"teacher", "teachers", "교사", "선생님"},
    "programmer": {"programmer", "programmers", "프로그래머", "개발자"},
    "scientist": {"scientist", "scientists", "과학자"}, "lawyer": {"lawyer", "lawyers", "변호사"},
    "secretary": {"secretary", "secretaries", "비서"}, "manager": {"manager", "managers", "ceo", "관리자", "사장"},
    "pilot": {"pilot", "pilots", "조종사"}, "chef": {"chef", "chefs", "cook", "요리사"},
    "soldier": {"soldier", "soldiers", "군인"}, "professor": {"professor", "professors", "교수"},
    "receptionist": {"receptionist", "receptionists", "접수원"}, "librarian": {"librarian", "사서"},
    "mechanic": {"mechanic", "mechanics", "정비사"}, "surgeon": {"surgeon", "surgeons", "외과의사"},
    "accountant": {"accountant", "accountants", "회계사"}, "architect": {"architect", "architects", "건축가"},
    "farmer": {"farmer", "farmers", "농부"}, "judge": {"judge", "judges", "판사"},
    "dancer": {"dancer", "dancers", "무용수"}, "housekeeper": {"housekeeper", "homemaker", "가정부", "주부"},
    "carpenter": {"carpenter", "carpenters", "목수"}, "journalist": {"journalist", "journalists", "기자"},
    "police": {"policeman", "policewoman", "officer", "경찰", "경찰관"},
    "firefighter": {"firefighter", "firefighters", "소방관"}, "designer": {"designer", "designers", "디자이너"},
}
# Korean particles a word may carry (가장 흔한 조사), plural 들 included
_PARTICLES = ("", "은", "는", "이", "가", "을", "를", "의", "에게", "께서", "와", "과", "도", "만", "로", "으로",
              "에서", "들", "들은", "들이", "들을", "들의", "들과", "들도", "이다", "였다", "이었다")
_WORD = re.compile(r"[\w'-]+")
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s+|\n+")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def _index() -> dict[str, tuple[str, str]]:
    """word (each Korean term with every particle) -> (category, group); occupations as ("occupation", name)."""
    out: dict[str, tuple[str, str]] = {}
    groups = [(c, g, words) for c, gs in TERMS.items() for g, words in gs.items()]
    groups += [("occupation", name, words) for name, words in OCCUPATIONS.items()]
    for category, group, words in groups:
        for w in words:
            for particle in _PARTICLES if _HANGUL.search(w) else ("",):
                out.setdefault(w + particle, (category, group))
    return out


INDEX = _index()


def count(text: str) -> dict:
    """One document's counts: ``words``, ``terms`` {"category:group": n} and ``occupations``
    {"occupation:gender": sentences naming both}."""
    words = _WORD.findall(text.lower())
    hits = [INDEX[w] for w in words if w in INDEX]
    terms = Counter(f"{c}:{g}" for c, g in hits if c != "occupation")
    pairs: Counter = Counter()
    if any(c == "occupation" for c, _ in hits):  # sentences only where an occupation is named
        for sentence in _SENTENCE.split(text.lower()):
            found = {INDEX[w] for w in _WORD.findall(sentence) if w in INDEX}
            genders = {g for c, g in found if c == "gender"}
            for c, occupation in found:
                if c == "occupation":
                    pairs.update(f"{occupation}:{g}" for g in genders)
    return {"words": len(words), "terms": terms, "occupations": pairs}


def summarize(words: int, terms: Counter, occupations: Counter) -> dict:
    """The manifest's ``bias`` section from the summed counts."""
    per_million = {c: {g: round(terms.get(f"{c}:{g}", 0) * 1e6 / max(words, 1), 1) for g in groups}
                   for c, groups in TERMS.items()}
    table, skewed = {}, []
    for occupation in OCCUPATIONS:
        male, female = occupations.get(f"{occupation}:male", 0), occupations.get(f"{occupation}:female", 0)
        if male + female:
            table[occupation] = {"male": male, "female": female, "female_share": round(female / (male + female), 3)}
            if male + female >= MIN_MENTIONS and max(male, female) / (male + female) >= SKEW_SHARE:
                skewed.append(occupation)
    return {"words": words, "per_million_words": per_million, "occupations_with_gender": table,
            "skewed_occupations": sorted(skewed), "rule": f"an occupation named in >= {MIN_MENTIONS} sentences with a "
            f"gendered word, >= {SKEW_SHARE:.0%} of them one gender"}
