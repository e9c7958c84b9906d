"""PII redaction: typed placeholders (``<EMAIL>``, ``<PHONE>``, ...) with per-type counts. Pure Python.

Each detector is a regex for the candidate shape plus, where the shape alone would hit ordinary or
technical text, a validator that sees the match in its context: Luhn and the card networks' number
ranges for cards, real dates for Korean resident registration numbers, the SSA's never-issued ranges
for US SSNs, ``ipaddress`` for IPs. Detectors run in a fixed order, so a longer, more specific match (a
card number) is replaced before a shorter one (a phone number) could claim its digits.

What is not PII here, and why (measured on technical text: docs/benchmarks.md, "PII precision"):

- IP addresses that cannot point at a subscriber: private, loopback, link-local, documentation,
  multicast and reserved ranges, netmasks, the unspecified ``::`` and ``0.0.0.0``, and a few public DNS
  resolvers (datatrove and BigCode's PII pipeline keep non-public addresses too). A lone ``::`` is a
  reStructuredText literal marker, a Python classifier separator or a Haskell type signature far more
  often than an address, and ``std::io`` a scope. Dotted numbers after ``v``/``version``/``버전``, after a
  Debian epoch (``1:2.3.4.5``) or followed by a package revision (``1.2.3.4-1``, ``+dfsg``) are versions.
- MAC addresses: they name network cards, not people, and in documentation and logs they are examples
  or infrastructure; the public IP of a connection is what locates a person, and that is redacted.
- UUIDs, hashes, dates, times, version strings: identifiers of things and events, not of people.
- A 13-digit run is a Korean resident registration number only with its dash, or right after words
  that say so (주민등록번호, 주민번호, RRN): millisecond timestamps and IDs have the same shape.
- ``user@host:path`` is an scp/git remote (``git@github.com:org/repo``), and ``getty@tty1.service`` a
  systemd unit, not a mailbox.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable

_NOT_DIGIT_BEFORE = r"(?<![\w.+-])"
_NOT_DIGIT_AFTER = r"(?![\w-]|\.\d)"


def _luhn_ok(digits: list[int]) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# (first digits as a range, allowed lengths) of the card networks: Visa, Mastercard, Amex, Discover,
# JCB, Diners Club, UnionPay, and Korean domestic cards (BC and others in 9xxx).
_CARD_RANGES = [((4, 4), (13, 16, 19)), ((51, 55), (16,)), ((2221, 2720), (16,)), ((34, 34), (15,)),
                ((37, 37), (15,)), ((6011, 6011), (16, 17, 18, 19)), ((644, 649), (16, 17, 18, 19)),
                ((65, 65), (16, 17, 18, 19)), ((3528, 3589), (16, 17, 18, 19)), ((300, 305), (14, 15, 16, 17, 18, 19)),
                ((36, 36), (14, 15, 16, 17, 18, 19)), ((38, 39), (16, 17, 18, 19)), ((62, 62), (16, 17, 18, 19)),
                ((94, 94), (16,))]


def _card_ok(m: re.Match) -> bool:
    """Luhn, and a length and leading digits that a card network issues: an arbitrary 13-19 digit
    number (a byte count, an ID) passes Luhn one time in ten, a network range far less often."""
    text = m.group(0)
    digits = [int(c) for c in text if c.isdigit()]
    if len(set(digits)) == 1:
        return False
    number = "".join(map(str, digits))
    in_range = any(lo <= int(number[: len(str(lo))]) <= hi and len(digits) in lengths
                   for (lo, hi), lengths in _CARD_RANGES)
    return in_range and _luhn_ok(digits)


_RRN_WORDS = re.compile(r"(주민\s*(등록)?\s*번호|등록번호|RRN)\W{0,4}$", re.IGNORECASE)


def _rrn_ok(m: re.Match) -> bool:
    """YYMMDD must be a real date; the 7th digit encodes century and sex (1-8); without its dash the
    number must follow words that name it."""
    candidate = m.group(0)
    digits = candidate.replace("-", "")
    yy, mm, dd, code = int(digits[0:2]), int(digits[2:4]), int(digits[4:6]), int(digits[6])
    if code not in range(1, 9):
        return False
    if "-" not in candidate and not _RRN_WORDS.search(m.string[max(0, m.start() - 24) : m.start()]):
        return False
    century = {1: 1900, 2: 1900, 5: 1900, 6: 1900, 3: 2000, 4: 2000, 7: 2000, 8: 2000}[code]
    try:
        datetime.date(century + yy, mm, dd)
    except ValueError:
        return False
    return True


def _ssn_ok(m: re.Match) -> bool:
    area, group, serial = m.group(0).split("-")
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


# Public resolvers quoted in every networking how-to: infrastructure, not anyone's connection.
_PUBLIC_RESOLVERS = {"8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112",
                     "208.67.222.222", "208.67.220.220", "2001:4860:4860::8888", "2001:4860:4860::8844",
                     "2606:4700:4700::1111", "2606:4700:4700::1001"}
# Words and operators after which a dotted number is a version or a section: "v1.2.3.4", "Version to
# 4.5.1.0", ">=1.0.9.2", "section 5.4.1.2"; and Korean section words after it: "3.2.1.4절".
_VERSION_BEFORE = re.compile(r"(?:\b[vV]|(?i:version|release|build|\bver\.?|section|chapter)\W{0,3}(?:to |from |is )?"
                             r"|버전 ?|릴리스 ?|§ ?|[<>=!~]=?\s?)$")
_SECTION_AFTER = re.compile(r"[-+~][0-9A-Za-z]|[절항장조]")


def _ip_ok(m: re.Match) -> bool:
    """A public (globally routed) address, written as an address rather than a version or a prefix."""
    candidate = m.group(0)
    try:
        ip = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    after = m.string[m.end() : m.end() + 2]
    if not ip.is_global or ip.is_multicast or candidate in _PUBLIC_RESOLVERS or after[:1] == "/":
        return False  # private, loopback, documentation, reserved...; or a network prefix (x/len)
    if ip.version == 6:
        return sum(1 for group in candidate.split(":") if group) >= 3  # not "::" or "a::b"
    before = m.string[max(0, m.start() - 20) : m.start()]
    is_version = _VERSION_BEFORE.search(before) or before.endswith(":") or _SECTION_AFTER.match(after)
    return not is_version


def _phone_ok(m: re.Match) -> bool:
    return 8 <= sum(c.isdigit() for c in m.group(0)) <= 15


_SYSTEMD_UNITS = ("service", "socket", "target", "timer", "mount", "automount", "path", "slice", "scope", "device",
                  "swap")


def _email_ok(m: re.Match) -> bool:
    """Not an scp-style remote (``git@github.com:org/repo.git``) nor a systemd unit instance
    (``getty@tty1.service``)."""
    scp = re.match(r":[\w~/.-]", m.string[m.end() : m.end() + 2])
    return not scp and m.group(0).rsplit(".", 1)[-1] not in _SYSTEMD_UNITS


def _rx(pattern: str) -> re.Pattern:
    # ASCII classes: in Korean a particle follows a number or address with no space (010-1234-5678입니다,
    # test@example.com으로), and Unicode \w / \b would take the Hangul as part of the match's word.
    return re.compile(pattern, re.ASCII)


# (type, pattern, validator). Order: most specific first.
DETECTORS: list[tuple[str, re.Pattern, Callable[[re.Match], bool] | None]] = [
    ("SECRET", _rx(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"), None),
    ("SECRET", _rx(r"(?i)(aws_secret_access_key\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{40}\b"), None),
    ("SECRET", _rx(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}\b"), None),
    # API keys: OpenAI / Anthropic (sk-, sk-proj-, sk-ant-), Google (AIza), Stripe (sk_live_, rk_test_).
    ("SECRET", _rx(r"\bsk-[A-Za-z0-9_-]{20,}|\bAIza[0-9A-Za-z_-]{35}\b|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b"),
     None),
    ("SECRET", _rx(r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----[\s\S]+?-----END (?:[A-Z ]+ )?PRIVATE KEY-----"), None),
    # Local parts may be Hangul (RFC 6531 allows UTF-8): 홍길동@example.com.
    ("EMAIL", _rx(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+\-\uac00-\ud7a3]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
                  r"\.[A-Za-z]{2,}\b"), _email_ok),
    ("CREDIT_CARD", _rx(_NOT_DIGIT_BEFORE + r"(?:\d[ -]?){12,18}\d" + _NOT_DIGIT_AFTER), _card_ok),
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


def redact(text: str, examples: list[tuple[str, str]] | None = None) -> tuple[str, dict[str, int]]:
    """Replace every detected PII span with ``<TYPE>``; returns the new text and counts per type. With
    ``examples``, appends ``(type, masked example)`` for each replacement (see :func:`masked_example`)."""
    counts: dict[str, int] = {}
    hints = _hints(text)
    for name, pattern, valid in DETECTORS:
        def replace(m: re.Match, name=name, valid=valid) -> str:
            if valid is not None and not valid(m):
                return m.group(0)
            counts[name] = counts.get(name, 0) + 1
            keep = m.group(1) if m.re.groups else ""  # a key name kept before its secret value
            if examples is not None:
                examples.append((name, masked_example(m, name, keep)))
            return f"{keep}<{name}>"

        if hints[name]:
            text = pattern.sub(replace, text)
    return text, counts


_SHAPE = str.maketrans("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                       "9" * 10 + "a" * 26 + "A" * 26)


def masked_example(m: re.Match, name: str, keep: str = "", width: int = 40) -> str:
    """What a report shows of one redaction: the words around it (themselves redacted) and the value's
    shape with every digit a 9 and letter an a/A (``<IP_ADDRESS 999.9.9.99>``), so a reader can tell a
    false positive (a version, a ``::``) from a real value without the value being shown."""
    shape = re.sub(r"[\uac00-\ud7a3]", "가", m.group(0)[len(keep):].translate(_SHAPE))
    left = m.string[max(0, m.start() - width) : m.start()]
    right = m.string[m.end() : m.end() + width]
    # Whole words only: a window's cut could leave the tail of another value (the last digits of a phone).
    left = left.split(None, 1)[-1] if m.start() > width and " " in left.strip() else left
    right = right.rsplit(None, 1)[0] if m.end() + width < len(m.string) and " " in right.strip() else right
    left, right = (" ".join(redact(part)[0].split()) for part in (left + keep, right))
    return f"…{left} <{name} {shape[:40]}> {right}…"


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
