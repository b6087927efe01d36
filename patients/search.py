"""Forgiving search over encrypted names and phones: keyed tokens, then an exact check.

A search never decrypts to look: it computes the tokens of what was typed, finds the patients
holding one of them in ``patients.models.SearchToken`` (an index on (kind, token)), decrypts
only those candidates and keeps the ones whose decrypted values really match (``rank``).
What each kind of token leaks is in docs/security-model.md ("Search tokens").

Every name is first folded by ``compact``: accents, case, spaces, hyphens and apostrophes
dropped, so ``LEGOFF``, ``Le Goff`` and ``le-goff`` are one string (``legoff``). A name that
starts with particles (``Le``, ``de la``, ``Van der``...) is also indexed without them
(``goff``), so the particle may be typed or not.

Tokens of a patient (each a truncated keyed HMAC, ``audit.blind.blind_index``):

- ``LAST``: the compact last name (and its form without particles): exact matches;
- ``PREFIX``: its prefixes of 3 to ``PREFIX_MAX`` letters: "Kowal" finds Kowalczyk (a longer
  prefix typed is looked up by its first ``PREFIX_MAX`` letters, then checked in full);
- ``DELETION``: the compact last name and each string made by deleting one of its letters
  (its deletion neighbourhood, as in SymSpell). Two strings are one insertion, deletion,
  substitution or transposition apart only if one is in the other's neighbourhood or their
  neighbourhoods meet, so looking up the typed name and its own deletions finds every name
  one typo away (and a few two edits away, dropped by the exact check);
- ``FIRST``: the first of the first names; ``FULL``: last name and first first-name together
  ("Bertin Simone" typed in the name box, in either order);
- ``PHONE_SUFFIX``: the last 4 to ``PHONE_SUFFIX_MAX`` digits of each phone.

No phonetic key: the deletion neighbourhood covers the one-typo case the front desk meets,
without leaking sound classes (docs/security-model.md).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from audit import blind

PREFIX_MIN = 3
PREFIX_MAX = 8
# Names shorter than this get no deletions: a typed name of PREFIX_MIN letters is still
# looked up in the neighbourhoods (finding names one letter longer), not its own deletions.
FUZZY_MIN = 4
PHONE_SUFFIX_MIN = 4
PHONE_SUFFIX_MAX = 6
# More words than this in the name box are taken as a last name only (no last/first split).
SPLIT_MAX_WORDS = 6

# Leading particles of French (and neighbouring) surnames, after normalize_name ("d'Arc" is "d arc").
PARTICLES = frozenset(
    ["d", "l", "de", "du", "des", "la", "le", "les", "van", "von", "der", "den", "ter", "ten"]
    + ["di", "da", "del", "della", "dos", "das", "do"]
)

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_DIGITS = re.compile(r"\D+")


class Kind(enum.IntEnum):
    """The kinds of search token; each has its own HKDF-derived key and bit length
    (``audit.blind.INDEX_BITS``, under the name ``search_<kind>``)."""

    LAST = 1
    PREFIX = 2
    DELETION = 3
    FIRST = 4
    FULL = 5
    PHONE_SUFFIX = 6

    @property
    def index_name(self) -> str:
        return f"search_{self.name.lower()}"


# Which patient fields each kind is computed from (the save path rewrites a kind when one changes).
KIND_FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.LAST: ("last_name",),
    Kind.PREFIX: ("last_name",),
    Kind.DELETION: ("last_name",),
    Kind.FIRST: ("first_names",),
    Kind.FULL: ("last_name", "first_names"),
    Kind.PHONE_SUFFIX: ("phone_mobile", "phone_other"),
}


# --------------------------------------------------------------------------- normal forms


def compact(value: str) -> str:
    """normalize_name, then only letters and digits: 'Le Goff', 'LEGOFF', 'le-goff' -> 'legoff'."""
    return _NOT_ALNUM.sub("", blind.normalize_name(value))


def without_particles(value: str) -> str:
    """The compact name without its leading particles ('de la Fontaine' -> 'fontaine'), or ''
    when it has none (or is nothing but particles)."""
    words = blind.normalize_name(value).split(" ")
    start = 0
    while start < len(words) - 1 and words[start] in PARTICLES:
        start += 1
    return compact(" ".join(words[start:])) if start else ""


def name_forms(last_name: str) -> list[str]:
    """The compact last name, then its form without particles when it differs."""
    forms = [compact(last_name)]
    stripped = without_particles(last_name)
    if stripped and stripped != forms[0]:
        forms.append(stripped)
    return [f for f in forms if f]


def first_word(first_names: str) -> str:
    """The first of the first names, compact ('Anne-Marie' -> 'anne', as the full-name index)."""
    normalized = blind.normalize_name(first_names)
    return compact(normalized.split(" ")[0]) if normalized else ""


def phone_digits(value: str) -> str:
    return _DIGITS.sub("", value or "")


def deletions(value: str) -> set[str]:
    """Each string made by deleting one character of ``value``."""
    return {value[:i] + value[i + 1 :] for i in range(len(value))}


def neighbourhood(value: str) -> set[str]:
    """``value`` and, when it is long enough to be searched for typos, its deletions."""
    if len(value) < PREFIX_MIN:
        return set()
    return {value} | (deletions(value) if len(value) >= FUZZY_MIN else set())


def prefixes(value: str) -> set[str]:
    """Prefixes of PREFIX_MIN..PREFIX_MAX characters, shorter than the value (the whole value
    is the LAST token)."""
    return {value[:n] for n in range(PREFIX_MIN, min(len(value) - 1, PREFIX_MAX) + 1)}


def within_one_edit(a: str, b: str) -> bool:
    """Optimal string alignment distance <= 1: equal, or one insertion, deletion,
    substitution or transposition of adjacent characters apart."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        if a[i + 1 :] == b[i + 1 :]:
            return True  # substitution
        return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
    longer, shorter = (a, b) if len(a) > len(b) else (b, a)
    return longer[i + 1 :] == shorter[i:]


# --------------------------------------------------------------------------- tokens


def token(kind: Kind, value: str) -> int | None:
    return blind.blind_index(kind.index_name, value)


def _tokens(kind: Kind, values: Iterable[str]) -> Iterator[tuple[int, int]]:
    for value in sorted(set(values)):
        t = token(kind, value)
        if t is not None:
            yield int(kind), t


def patient_tokens(
    *, last_name: str = "", first_names: str = "", phones: Iterable[str] = (), kinds: Iterable[Kind] = tuple(Kind)
) -> set[tuple[int, int]]:
    """The (kind, token) pairs of one patient's values, for the kinds asked."""
    kinds = set(kinds)
    forms = name_forms(last_name)
    first = first_word(first_names)
    out: set[tuple[int, int]] = set()
    if Kind.LAST in kinds:
        out.update(_tokens(Kind.LAST, forms))
    if Kind.PREFIX in kinds:
        out.update(_tokens(Kind.PREFIX, (p for f in forms for p in prefixes(f))))
    if Kind.DELETION in kinds:
        out.update(_tokens(Kind.DELETION, (d for f in forms for d in neighbourhood(f))))
    if Kind.FIRST in kinds and first:
        out.update(_tokens(Kind.FIRST, [first]))
    if Kind.FULL in kinds and first:
        out.update(_tokens(Kind.FULL, (f"{f}\x1f{first}" for f in forms)))
    if Kind.PHONE_SUFFIX in kinds:
        suffixes: set[str] = set()
        for phone in phones:
            digits = phone_digits(phone)
            suffixes.update(digits[-n:] for n in range(PHONE_SUFFIX_MIN, PHONE_SUFFIX_MAX + 1) if len(digits) >= n)
        out.update(_tokens(Kind.PHONE_SUFFIX, suffixes))
    return out


# --------------------------------------------------------------------------- queries


class Tier(enum.IntEnum):
    """How a result matched: the order results are shown in."""

    EXACT = 0
    PREFIX = 1
    FUZZY = 2


@dataclass(frozen=True)
class NameTerms:
    """One reading of what was typed for a name: a last name, and maybe a first name."""

    last: str  # compact
    first: str = ""  # compact first word, or ''

    def lookups(self, tier: Tier) -> list[tuple[Kind, list[int]]]:
        """The token lookups that must all hold for a candidate of this tier ([] if the tier
        cannot apply to this input: too short for a prefix or a typo)."""
        last = self.last
        if tier is Tier.EXACT:
            if self.first:
                return [(Kind.FULL, _values(Kind.FULL, [f"{last}\x1f{self.first}"]))]
            return [(Kind.LAST, _values(Kind.LAST, [last]))]
        if tier is Tier.PREFIX:
            if len(last) < PREFIX_MIN:
                return []
            found = [(Kind.PREFIX, _values(Kind.PREFIX, [last[:PREFIX_MAX]]))]
        else:
            if len(last) < PREFIX_MIN:
                return []
            found = [(Kind.DELETION, _values(Kind.DELETION, neighbourhood(last)))]
        if self.first:
            found.append((Kind.FIRST, _values(Kind.FIRST, [self.first])))
        return found


def _values(kind: Kind, values: Iterable[str]) -> list[int]:
    return sorted({t for _, t in _tokens(kind, values)})


def name_readings(typed: str, first_name: str = "") -> list[NameTerms]:
    """The readings of the name box: the whole text as a last name; and, when it has several
    words and no first name was typed apart, each split into last and first name in either
    order ('Bertin Simone' is BERTIN Simone or SIMONE Bertin). With a first name typed apart,
    the name box is the last name."""
    last = compact(typed)
    if not last:
        return []
    if first_name:
        return [NameTerms(last=last, first=first_word(first_name))]
    readings = [NameTerms(last=last)]
    words = [w for w in blind.normalize_name(typed).split(" ") if w]
    if 2 <= len(words) <= SPLIT_MAX_WORDS:
        for i in range(1, len(words)):
            head, tail = " ".join(words[:i]), " ".join(words[i:])
            for surname, given in ((head, tail), (tail, head)):
                terms = NameTerms(last=compact(surname), first=first_word(given))
                if terms.first and terms not in readings:
                    readings.append(terms)
    return readings


def name_tier(terms: NameTerms, last_name: str, first_names: str) -> tuple[Tier, int] | None:
    """How a decrypted patient matches a reading, with a closeness to sort by within the tier;
    None for a false candidate."""
    if terms.first and first_word(first_names) != terms.first:
        return None
    forms = name_forms(last_name)
    typed = terms.last
    if typed in forms:
        return Tier.EXACT, 0
    if len(typed) >= PREFIX_MIN:
        longer = [len(f) - len(typed) for f in forms if f.startswith(typed)]
        if longer:
            return Tier.PREFIX, min(longer)
    if len(typed) >= PREFIX_MIN and any(within_one_edit(typed, f) for f in forms):
        return Tier.FUZZY, 1
    return None


def phone_suffix_lookup(typed: str) -> tuple[str, list[tuple[Kind, list[int]]]] | None:
    """The digits typed as the end of a phone number and their lookup, or None if fewer than
    PHONE_SUFFIX_MIN digits (a longer run is looked up by its last PHONE_SUFFIX_MAX digits)."""
    digits = phone_digits(typed)
    if len(digits) < PHONE_SUFFIX_MIN:
        return None
    return digits, [(Kind.PHONE_SUFFIX, _values(Kind.PHONE_SUFFIX, [digits[-PHONE_SUFFIX_MAX:]]))]
