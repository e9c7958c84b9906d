"""PII redaction: every supported type in English and Korean formats; ordinary numbers untouched."""

import pytest

from lmforge.data.pii import redact


@pytest.mark.parametrize("text, kind", [
    ("Write to jane.doe+news@example.co.uk today.", "EMAIL"),
    ("문의: 홍길동 gildong.hong@naver.com 으로 연락 주세요.", "EMAIL"),
    ("Call +1 (415) 555-0132 now.", "PHONE"),
    ("Call (415) 555-0132 now.", "PHONE"),
    ("Call 415-555-0132 now.", "PHONE"),
    ("Call 1-800-555-0199 now.", "PHONE"),
    ("Office: +44 20 7946 0958.", "PHONE"),
    ("휴대폰 010-1234-5678 로 연락하세요.", "PHONE"),
    ("휴대폰 01012345678 로 연락하세요.", "PHONE"),
    ("서울 사무실 02-123-4567 입니다.", "PHONE"),
    ("경기 031-987-6543 입니다.", "PHONE"),
    ("국제전화 +82 10-1234-5678 입니다.", "PHONE"),
    ("Card 4111 1111 1111 1111 expires soon.", "CREDIT_CARD"),
    ("Card 5500-0000-0000-0004 expires soon.", "CREDIT_CARD"),
    ("Card 378282246310005 (Amex).", "CREDIT_CARD"),
    ("Server at 192.168.10.254 is down.", "IP_ADDRESS"),
    ("IPv6 2001:db8:85a3::8a2e:370:7334 works.", "IP_ADDRESS"),
    ("IPv6 fe80::1 link-local.", "IP_ADDRESS"),
    ("주민등록번호 900101-1234567 은 비밀입니다.", "KR_RRN"),
    ("주민번호 0502144123456 입력", "KR_RRN"),
    ("SSN 123-45-6789 on file.", "US_SSN"),
    ("key AKIAIOSFODNN7EXAMPLE leaked", "SECRET"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "SECRET"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789 in repo", "SECRET"),
    # Korean particles follow with no space: the match must end where the ASCII does.
    ("연락처는 010-1234-5678입니다.", "PHONE"),
    ("사무실 (02)123-4567로 전화", "PHONE"),
    ("휴대폰 (010)1234-5678번", "PHONE"),
    ("메일은 test@example.com으로 보내세요.", "EMAIL"),
    ("주민번호 900101-1234567이고", "KR_RRN"),
    ("카드 4111-1111-1111-1111로 결제", "CREDIT_CARD"),
    ("서버 IP는 192.168.0.1이다.", "IP_ADDRESS"),
    ("SSN 123-45-6789였다.", "US_SSN"),
    ("키는 AKIAIOSFODNN7EXAMPLE입니다.", "SECRET"),
    ("Paris office +33 1 23 45 67 89.", "PHONE"),
    ("담당자 메일 홍길동@example.com 으로 문의", "EMAIL"),
    ("OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "SECRET"),
    ("maps key AIzaSyA1234567890abcdefghijklmnopqrstuv in the page", "SECRET"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc leaked", "SECRET"),
])
def test_detects_and_replaces(text, kind):
    out, counts = redact(text)
    assert counts.get(kind) == 1, (out, counts)
    assert f"<{kind}>" in out


@pytest.mark.parametrize("text", [
    "The treaty was signed on 2023-01-15 and ratified 15/01/2023.",
    "Upgrade from version 1.2.3 to 10.4.1 fixes it; Python 3.11.7 too.",
    "In 1998, 12,345 people attended; the population was 3,456,789.",
    "The score was 3-1 at 19:45:30 and the match lasted 90 minutes.",
    "ISBN 978-3-16-148410-0 and order number 1234567890123 (fails Luhn).",
    "The range 10.0.0.256 is not an address, nor is 1.2.3.",
    "Route 66 runs 2,448 miles; call signs like KB-1234 are not phones.",
    "2024년 3월 15일에 발표된 보고서에 따르면 인구는 51,740,000명이다.",
    "제품 번호 123456-7890123 는 주민번호 형식이지만 날짜가 아니다.",
    "Coordinates 37.5665, 126.9780 mark Seoul; temperature -3.5 C.",
    "US SSN-like 000-12-3456 and 666-12-3456 are never issued.",
    "Ratio 1:2:3 and times 12:30 do not look like IPv6.",
    "버전 1.2.3에서 제1234567호 문서와 인구 9,668,465명이 언급되었다.",
    "Firmware version 1.2.3.4 and v10.0.0.1 replace 버전 2.0.0.1 builds; the task-force met.",
])
def test_ordinary_numbers_are_left_alone(text):
    out, counts = redact(text)
    assert counts == {} and out == text


def test_counts_accumulate_per_type():
    out, counts = redact("a@b.io, c@d.io and 010-1111-2222")
    assert counts == {"EMAIL": 2, "PHONE": 1}
    assert out == "<EMAIL>, <EMAIL> and <PHONE>"
