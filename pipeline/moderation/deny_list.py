"""The operator's deny-list of prompt patterns, matched as whole words on normalised text.

File format, one pattern per line (UTF-8):

* blank lines and lines starting with `#` are ignored;
* a plain line is a word or phrase, matched literally (`*`, `.` and the like are plain characters); the
  spaces of a phrase match any run of whitespace;
* a line starting with `re:` is a Python regular expression, matched case-insensitively on the
  normalised text (so write it for NFKC text; inline global flags such as `(?s)` are not available),
  and as whole words too.

Both the patterns and the prompt are normalised the same way (`normalise_text`): Unicode NFKC (fullwidth
and compatibility forms become plain letters, a decomposed accent is composed), format characters
removed (zero-width spaces and joiners, soft hyphens: invisible letters that would split a word), then
case-folded. Accents stay significant: `cafe` does not match `café`. A match counts only as whole words:
the characters either side of it must not be letters, marks, digits or `_`, so `ass` never matches
inside `class`. A verdict names the rule by its line number, never the text it matched.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from pathlib import Path

from pipeline.errors import ModelLoadError

REGEX_PREFIX = "re:"


def normalise_text(text: str) -> str:
    """NFKC, without format characters (category Cf), case-folded, NFKC again (folding can decompose)."""
    composed = unicodedata.normalize("NFKC", text)
    visible = "".join(char for char in composed if unicodedata.category(char) != "Cf")
    return unicodedata.normalize("NFKC", visible.casefold())


@functools.cache
def _word_boundaries() -> tuple[str, str]:
    """Lookarounds that fail next to a letter, mark, digit or `_`: `\\w` is Python's letters, digits and
    `_`, and a combining mark (a vowel sign of Devanagari, say) is part of its word too."""
    ranges: list[str] = []
    start: int | None = None
    for code in range(sys.maxunicode + 2):
        is_mark = code <= sys.maxunicode and unicodedata.category(chr(code)).startswith("M")
        if is_mark and start is None:
            start = code
        elif not is_mark and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{code - 1:08x}")
            start = None
    word = "[\\w" + "".join(ranges) + "]"
    return f"(?<!{word})", f"(?!{word})"


class DenyList:
    """Compiled deny-list rules: (line number, pattern on normalised text)."""

    def __init__(self, rules: list[tuple[int, re.Pattern[str]]]) -> None:
        self._rules = rules

    def __len__(self) -> int:
        return len(self._rules)

    @classmethod
    def from_text(cls, text: str, *, source: str = "deny-list") -> DenyList:
        """Parse the file format above; raises `ModelLoadError` naming `source` and the line of a bad rule."""
        rules: list[tuple[int, re.Pattern[str]]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(REGEX_PREFIX):
                expression = line[len(REGEX_PREFIX) :].strip()
                try:
                    matches_empty = re.fullmatch(expression, "", re.IGNORECASE) is not None
                    pattern = _whole_words(f"(?:{expression})", re.IGNORECASE)
                except re.error as exc:
                    raise ModelLoadError(
                        f"{source} line {number}: invalid regular expression ({exc}); fix or remove the line"
                    ) from exc
                if matches_empty:
                    raise ModelLoadError(
                        f"{source} line {number}: the regular expression matches empty text (it would flag "
                        "every prompt); fix or remove the line"
                    )
            else:
                words = normalise_text(line).split()
                if not words:
                    raise ModelLoadError(
                        f"{source} line {number}: nothing is left of the pattern once invisible characters "
                        "are removed; fix or remove the line"
                    )
                pattern = _whole_words(r"\s+".join(re.escape(word) for word in words))
            rules.append((number, pattern))
        return cls(rules)

    @classmethod
    def from_file(cls, path: Path) -> DenyList:
        """Read the deny-list file; raises `ModelLoadError` (one line) when it cannot be read or parsed."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            problem = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be read ({exc})"
            raise ModelLoadError(
                f"moderation deny-list {path} {problem}: point KLEIN_EDIT_MODERATION__DENY_LIST at a UTF-8 "
                "file of patterns, one per line, or unset it"
            ) from exc
        return cls.from_text(text, source=f"moderation deny-list {path}")

    def match(self, text: str) -> str | None:
        """The first rule (in file order) that `text` matches as whole words, as "deny-list line N"; None
        when none does. The matched text is never returned."""
        normalised = normalise_text(text)
        for number, pattern in self._rules:
            if pattern.search(normalised) is not None:
                return f"deny-list line {number}"
        return None


def _whole_words(expression: str, flags: int = 0) -> re.Pattern[str]:
    before, after = _word_boundaries()
    return re.compile(before + expression + after, flags)
