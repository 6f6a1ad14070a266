"""The deny-list: whole words on NFKC, case-folded text; a verdict names the line, never the text."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ModelLoadError
from pipeline.moderation import DenyList, normalise_text

RULES = """\
# operator deny-list

forbidden
Bad  Thing
re:ex(plicit|treme)
café
नही
"""


def fullwidth(ascii_letters: str) -> str:
    """The fullwidth forms (U+FF21...) of ASCII letters, as a phone keyboard or an evasion types them."""
    return "".join(chr(ord(letter) + 0xFEE0) for letter in ascii_letters)


@pytest.fixture(scope="module")
def deny_list() -> DenyList:
    return DenyList.from_text(RULES)


@pytest.mark.parametrize(
    ("prompt", "rule"),
    [
        ("make it Forbidden", "deny-list line 3"),
        ("FORBIDDEN.", "deny-list line 3"),
        (fullwidth("forbidden") + " art", "deny-list line 3"),  # fullwidth letters (NFKC)
        ("for\u200bbidden", "deny-list line 3"),  # a zero-width space inside the word
        ("for\u00adbidden", "deny-list line 3"),  # a soft hyphen
        ("(forbidden)", "deny-list line 3"),
        ("a bad thing here", "deny-list line 4"),
        ("a BAD\n\tthing", "deny-list line 4"),  # a phrase's spaces are any whitespace
        ("very Explicit scene", "deny-list line 5"),
        ("an extreme close-up", "deny-list line 5"),
        ("un Café", "deny-list line 6"),
        ("un cafe\u0301", "deny-list line 6"),  # e + combining acute: NFKC composes it
        (fullwidth("CAF") + "\u00c9", "deny-list line 6"),
        ("यह नही है", "deny-list line 7"),
    ],
)
def test_flags_whole_words_case_and_unicode_insensitively(
    deny_list: DenyList, prompt: str, rule: str
) -> None:
    assert deny_list.match(prompt) == rule


@pytest.mark.parametrize(
    "prompt",
    [
        "forbiddenness",  # never inside a longer word
        "unforbidden",
        "forbidden_x",
        "forbidden2",
        "badthing",
        "a bad, thing",
        "explicitly",
        "inexplicit",
        "a cafe",  # accents are significant
        "यह नहीं है",  # a combining vowel sign is part of the word
        "",
    ],
)
def test_passes_text_that_is_not_a_whole_word_match(deny_list: DenyList, prompt: str) -> None:
    assert deny_list.match(prompt) is None


def test_the_rule_is_the_first_matching_line_and_never_the_text(deny_list: DenyList) -> None:
    rule = deny_list.match("extreme, explicit and forbidden")
    assert rule == "deny-list line 3"
    assert not any(word in rule for word in ("extreme", "explicit", "forbidden"))


def test_comments_and_blank_lines_are_not_rules() -> None:
    deny_list = DenyList.from_text("# forbidden\n\n   \n  # also a comment\nforbidden\n")
    assert len(deny_list) == 1
    assert deny_list.match("# also a comment") is None
    assert deny_list.match("forbidden") == "deny-list line 5"


def test_plain_lines_are_literal_not_patterns() -> None:
    deny_list = DenyList.from_text("f.ck\n")
    assert deny_list.match("f.ck it") == "deny-list line 1"
    assert deny_list.match("fuck it") is None


def test_a_regex_alternative_that_ends_inside_a_word_does_not_hide_a_whole_word_one() -> None:
    assert DenyList.from_text("re:a|ab\n").match("ab") == "deny-list line 1"


def test_reads_a_utf8_file_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "deny.txt"
    path.write_text("\ufeffforbidden\n", encoding="utf-8")
    assert DenyList.from_file(path).match("forbidden") == "deny-list line 1"


def one_line(exc: pytest.ExceptionInfo[ModelLoadError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_missing_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as caught:
        DenyList.from_file(tmp_path / "deny.txt")
    message = one_line(caught)
    assert f"{tmp_path / 'deny.txt'} does not exist" in message
    assert "KLEIN_EDIT_MODERATION__DENY_LIST" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ok\nre:(unclosed\n", "line 2: invalid regular expression"),
        ("re:x*\n", "line 1: the regular expression matches empty text"),
        ("\u200b\u200b\n", "line 1: nothing is left of the pattern"),
    ],
)
def test_a_bad_rule_stops_start_up_naming_its_line(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "deny.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelLoadError) as caught:
        DenyList.from_file(path)
    assert f"moderation deny-list {path} {problem}" in one_line(caught)


def test_normalisation() -> None:
    assert normalise_text(fullwidth("HELLO") + " Straße \ufb01") == "hello strasse fi"
    assert normalise_text("cafe\u0301") == "café"
    assert normalise_text("a\u200db\ufeffc") == "abc"
