"""PII redaction: typed placeholders (``<EMAIL>``, ``<PHONE>``, ...) with per-type counts. Pure Python.

Each detector is a regex for the candidate shape plus, where the shape alone would hit ordinary
text, a validator: Luhn for card numbers, real dates for Korean resident registration numbers, the
SSA's never-issued ranges for US SSNs, ``ipaddress`` for IPs. Dates (2024-01-15), versions (1.2.3),
years and plain numbers do not match any shape. Detectors run in a fixed order, so a longer, more
specific match (a card number) is replaced before a shorter one (a phone number) could claim its
digits.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable

_NOT_DIGIT_BEFORE = r"(?<![\w.+-])"
_NOT_DIGIT_AFTER = r"(?![\w-]|\.\d)"


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _rrn_ok(candidate: str) -> bool:
    """YYMMDD must be a real date; the 7th digit encodes century and sex (1-8)."""
    digits = candidate.replace("-", "")
    yy, mm, dd, code = int(digits[0:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6])
    if code not in range(1, 9):
        return False
    century = {1: 1900, 2: 1900, 5: 1900, 6: 1900, 3: 2000, 4: 2000, 7: 2000, 8: 2000}[code]
    try:
        datetime.date(century + yy, mm, dd)
    except ValueError:
        return False
    return True


def _ssn_ok(candidate: str) -> bool:
    area, group, serial = candidate.split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _ip_ok(candidate: str) -> bool:
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if ip.version == 6:
        return candidate.count(":") >= 2 and any(c.isalpha() for c in candidate) or "::" in candidate
    return True


def _phone_ok(candidate: str) -> bool:
    return 8 <= sum(c.isdigit() for c in candidate) <= 15


def _rx(pattern: str) -> re.Pattern:
    # ASCII classes: in Korean a particle follows a number or address with no space (010-1234-5678입니다,
    # test@example.com으로), and Unicode \w / \b would take the Hangul as part of the match's word.
    return re.compile(pattern, re.ASCII)


# (type, pattern, validator). Order: most specific first.
DETECTORS: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
    ("SECRET", _rx(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"), None),
    ("SECRET", _rx(r"(?i)(aws_secret_access_key\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}\b"), None),
    ("SECRET", _rx(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}\b"), None),
    # API keys: OpenAI / Anthropic (sk-, sk-proj-, sk-ant-), Google (AIza), Stripe (sk_live_, rk_test_).
    ("SECRET", _rx(r"\bsk-[A-Za-z0-9_-]{20,}|\bAIza[0-9A-Za-z_-]{35}\b|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b"),
     None),
    ("SECRET", _rx(r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----[\s\S]+?-----END (?:[A-Z ]+ )?PRIVATE KEY-----"), None),
    # Local parts may be Hangul (RFC 6531 allows UTF-8): 홍길동@example.com.
    ("EMAIL", _rx(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+\-\uac00-\ud7a3]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                  r"\.[A-Za-z]{2,}\b"), None),
    ("CREDIT_CARD", _rx(_NOT_DIGIT_BEFORE + r"(?:\d[ -]?){12,18}\d" + _NOT_DIGIT_AFTER), _luhn_ok),
    ("KR_RRN", _rx(_NOT_DIGIT_BEFORE + r"\d{6}-?[1-8]\d{6}" + _NOT_DIGIT_AFTER), _rrn_ok),
    ("US_SSN", _rx(_NOT_DIGIT_BEFORE + r"\d{3}-\d{2}-\d{4}" + _NOT_DIGIT_AFTER), _ssn_ok),
    ("IP_ADDRESS", _rx(r"(?<![\w.:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w.:])"), _ip_ok),
    # Not after "v" / "version" / "버전": four-part version numbers have the same shape.
    ("IP_ADDRESS", _rx(r"(?<![\w.])(?<![vV]ersion )(?<!버전 )(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                       r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"), _ip_ok),
    # Phones: international (+CC ...), Korean mobile/landline (area code in parentheses or not), North
    # American (NNN) NNN-NNNN with an optional leading 1.
    ("PHONE", _rx(r"(?<![\w+])\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,5}(?![\w-])"), _phone_ok),
    ("PHONE", _rx(_NOT_DIGIT_BEFORE + r"\(?01[016789]\)?[ .-]?\d{3,4}[ .-]?\d{4}" + _NOT_DIGIT_AFTER), _phone_ok),
    ("PHONE", _rx(_NOT_DIGIT_BEFORE + r"\(?0(?:2|[3-6][1-5]|70)(?:\)[ .-]?|[ .-])\d{3,4}[ .-]\d{4}" + _NOT_DIGIT_AFTER),
     _phone_ok),
    ("PHONE", _rx(r"(?<![\w-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}" + _NOT_DIGIT_AFTER), _phone_ok),
]

PII_TYPES = sorted({name for name, _, _ in DETECTORS})


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace every detected PII span with ``<TYPE>``; returns the new text and counts per type."""
    counts: dict[str, int] = {}
    hints = _hints(text)
    for name, pattern, valid in DETECTORS:
        def replace(m: re.Match, name=name, valid=valid) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[name] = counts.get(name, 0) + 1
            keep = m.group(1) if m.re.groups else ""  # a key name kept before its secret value
            return f"{keep}<{name}>"

        if hints[name]:
            text = pattern.sub(replace, text)
    return text, counts


# Every card, RRN, SSN and phone shape has 7+ digits with at most two separators between neighbours.
_LONG_NUMBER = re.compile(r"\d(?:[ .()+-]{0,2}\d){6}")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")
_IPV6_HINT = re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:")  # slow to scan: only run where a ':' is
_SECRET_HINT = re.compile(r"A[KSGIRN][A-Z]A|AIza|secret|SECRET|gh[pousr]_|xox|sk-|k_live_|k_test_|PRIVATE KEY")


def _hints(text: str) -> dict[str, bool]:
    """Cheap pre-checks, one pass each, so clean prose (years, dates, counts) skips most detectors."""
    hints = dict.fromkeys(PII_TYPES, _LONG_NUMBER.search(text) is not None)
    ip = _IPV4_HINT.search(text) is not None or (":" in text and _IPV6_HINT.search(text) is not None)
    hints.update(EMAIL="@" in text, SECRET=_SECRET_HINT.search(text) is not None, IP_ADDRESS=ip)
    return hints
