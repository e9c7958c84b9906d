"""PII redaction: every supported type in English and Korean formats; ordinary numbers untouched."""

import json
from pathlib import Path

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
    ("Server at 93.184.216.34 is down.", "IP_ADDRESS"),
    ("IPv6 2a00:1450:4001:82a::200e answered.", "IP_ADDRESS"),
    ("sshd[812]: Failed password for root from 203.0.5.77 port 22 ssh2", "IP_ADDRESS"),
    ("Connection from 2a00:1450:4001:82a::200e refused", "IP_ADDRESS"),
    ("payment log: card=4111111111111111; amount=30", "CREDIT_CARD"),
    ("/* Maintainer: Jay Schulist <jschlst@samba.org> */", "EMAIL"),
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
    ("서버 IP는 211.234.10.5이다.", "IP_ADDRESS"),
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


@pytest.mark.parametrize("text", [
    # `::` is not an address: reST literal markers, classifiers, Haskell signatures, C++/Rust scopes.
    "Here is the code::\n\n    print(1)",
    "Classifier: Programming Language :: Python :: 3 :: Only",
    "safeDiv :: Int -> Int -> Maybe Int",
    "std::vector<int> v; use std::io::Read; let x = IpAddr::V6(a);",
    "f :: a -> b\ng :: [a] -> Int",
    # Addresses that cannot point at anyone: loopback, unspecified, private, documentation, prefixes.
    "listen 0.0.0.0:80 and [::]:443; ping ::1 or 127.0.0.1",
    "Server at 192.168.10.254 is down; the LAN is 10.0.0.0/8.",
    "Use 2001:db8:85a3::8a2e:370:7334 (documentation) or fe80::1%eth0 (link-local).",
    "#label ::1/128 0\n#label ::/0 1\n#label 2002::/16 2\n#label ::ffff:0:0/96 4",
    "nameserver 8.8.8.8\nnameserver 1.1.1.1\nnetmask 255.255.255.0",
    # Versions in the shape of an IPv4 address.
    "brotlicffi>=1.0.9.2; Standards-Version to 4.5.1.0; libvulkan1 1.3.239.0-1",
    "Setting up libmodplug1:amd64 (1:0.8.9.0-3) ... libldacbt-enc2 2.0.2.3+git20200429-4",
    "Firmware version 1.2.3.4 and v10.0.0.1 replace 버전 2.0.0.1 builds; release 5.1.0.2 ships.",
    # Identifiers of things, not people: MACs, UUIDs, hashes, timestamps, byte counts, units, remotes.
    "link/ether 3c:22:fb:12:ab:9e brd ff:ff:ff:ff:ff:ff",
    "UUID=7c9e6679-7425-40de-944b-e07fc1f90ae7 / ext4 defaults 0 1",
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 "
    "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "ts=1735110912345 id 8501151234567 done; tx_bytes=1024000000000000 count=70001234567892",
    "2026-11-29T07:12:04.113595Z INFO done; Date: Mon, 30 Nov 2022 18:22:03 +0100; at 12:34:56",
    "Created symlink /etc/systemd/system/getty.target.wants/getty@tty1.service.",
    "git clone git@github.com:org/repo.git && git remote add up git@gitlab.com:team/app.git",
    # Korean technical text.
    "서식 - 셀 - 숫자 메뉴에서 #,##0.00 형식을 고르고 Ctrl+Shift+F5를 누르세요. 자세한 내용은 3.2.1.4절과 "
    "버전 7.4.2.3의 변경 사항, 셀 A1:B10 범위, 10:30:00 시각을 보세요.",
    "See section 5.4.1.12 of POSIX 1003.1g and § 2.3.1.4 for UIO_MAXIOV.",
])
def test_technical_text_is_left_alone(text):
    out, counts = redact(text)
    assert counts == {} and out == text, (out, counts)


TECHNICAL = [json.loads(line) for line in (Path(__file__).parents[1] / "fixtures" / "technical_text.jsonl")
             .read_text(encoding="utf-8").splitlines()]


def test_real_technical_text_regression_corpus():
    """Snippets of documentation, code, configs, logs, man pages and Korean help text, each with its reviewed
    redaction: real addresses of people and lists are replaced, nothing else changes."""
    wrong = [(row["id"], redact(row["text"])[0]) for row in TECHNICAL if redact(row["text"])[0] != row["expected"]]
    assert not wrong, wrong[:3]
    clean = [row for row in TECHNICAL if row["expected"] == row["text"]]
    assert len(TECHNICAL) > 500 and len(TECHNICAL) - len(clean) >= 10  # both kinds are there
    assert {row["kind"] for row in TECHNICAL} >= {"python_classifiers", "haskell", "cpp_headers", "rust_docs",
                                                  "shell", "sql", "config", "logs", "man_pages", "changelogs",
                                                  "versions_hashes", "uuids_dates_macs", "korean_technical"}


def test_counts_accumulate_per_type():
    out, counts = redact("a@b.io, c@d.io and 010-1111-2222")
    assert counts == {"EMAIL": 2, "PHONE": 1}
    assert out == "<EMAIL>, <EMAIL> and <PHONE>"


def test_masked_examples_show_shape_and_context_but_not_the_value():
    examples = []
    text = "Ask jane.doe@corp.com or call 010-1234-5678 from 211.234.10.5 today, quoting order 42."
    redact(text, examples)
    shown = dict(examples)
    assert shown["EMAIL"] == "…Ask <EMAIL aaaa.aaa@aaaa.aaa> or call <PHONE> from…"  # whole words only
    assert shown["IP_ADDRESS"] == ("…Ask <EMAIL> or call <PHONE> from <IP_ADDRESS 999.999.99.9> today, "
                                   "quoting order 42.…")
    for value in ("jane", "corp", "1234", "5678", "211"):
        assert all(value not in example for example in shown.values()), value
