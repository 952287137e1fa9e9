"""Rule-based resume extraction for the emulator's resume responder.

``extract_resume(text)`` reads the layouts ``engine.resumes_data`` writes (headed sections,
"Name: ..." forms, bullet lists, one prose paragraph) with regular expressions and section
headers, and returns a dict in the bundled ``resume`` schema's shape. Whatever the input
(empty, junk, megabytes), the result validates against that schema: a field the rules cannot
find is null, a list is empty. The emulator uses this so the demo's answers can be scored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["RESUME_SCHEMA_NAME", "extract_resume"]

RESUME_SCHEMA_NAME = "resume"
# Rules read at most this much; the engine itself refuses longer texts long before this.
_MAX_CHARS = 200_000
_MAX_ITEMS = 100
_MAX_FIELD_CHARS = 2_000

_STRING_FIELDS = (
    "full_name", "email", "phone", "location", "current_title", "current_employer", "summary",
)
_LIST_FIELDS = ("skills", "certifications", "languages")

_HEADERS = {
    "summary": "summary", "profile": "summary", "about me": "summary", "about": "summary",
    "professional summary": "summary", "objective": "summary",
    "experience": "experience", "work experience": "experience", "work history": "experience",
    "employment history": "experience", "employment": "experience",
    "professional experience": "experience",
    "education": "education", "academic background": "education",
    "skills": "skills", "technical skills": "skills", "core skills": "skills",
    "certifications": "certifications", "certificates": "certifications",
    "licenses & certifications": "certifications",
    "languages": "languages",
    "references": "references",
    "projects": "other", "interests": "other", "hobbies": "other",
}
_LABELS = {
    "name": "full_name", "full name": "full_name", "candidate": "full_name",
    "email": "email", "e-mail": "email", "email address": "email",
    "phone": "phone", "tel": "phone", "mobile": "phone", "telephone": "phone",
    "location": "location", "city": "location", "based in": "location", "address": "location",
    "current position": "current_position", "current title": "current_title",
    "current employer": "current_employer",
    "years of experience": "years_experience", "total experience": "years_experience",
    "skills": "skills", "languages": "languages", "certifications": "certifications",
    "summary": "summary", "profile": "summary",
}
_TITLE_WORDS = {"curriculum vitae", "résumé", "resume", "cv", "lebenslauf"}
_EMPTY_VALUES = {"", "-", "n/a", "na", "none", "—", "null", "not provided"}

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}"
)
# Country code, area code in parentheses, then 2-6 groups of digits split by space, dot or dash.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,8}){1,5}(?!\w)"
)
_YEAR_RANGE_ONLY = re.compile(r"^(?:19|20)\d\d\s*[-–. ]\s*(?:19|20)\d\d$")
_YEARS = re.compile(
    r"(?:(?P<a>\d{1,2}(?:\.\d+)?)\+?\s+years\s+of\s+(?:professional\s+)?experience)"
    r"|(?:(?:years\s+of\s+experience|total\s+experience)\s*:?\s*(?P<b>\d{1,2}(?:\.\d+)?))",
    re.IGNORECASE,
)
_MONTH = r"(?:[A-Za-z]{3,9}\.? )?"  # "Mar 2019", "Sept 2019": only the year is kept
_END = rf"{_MONTH}(?P<end>\d{{4}}|present|now|current|today)"
_JOB_PATTERNS = (
    re.compile(
        rf"^(?P<title>.+?) — (?P<employer>.+?) \| {_MONTH}(?P<start>\d{{4}}) – {_END}$", re.I
    ),
    re.compile(
        rf"^(?P<title>.+?) at (?P<employer>.+?) \({_MONTH}(?P<start>\d{{4}})\s*-\s*{_END}\)$",
        re.I,
    ),
    re.compile(rf"^(?P<employer>[^:]+?): (?P<title>.+?), (?P<start>\d{{4}}) to {_END}$", re.I),
    re.compile(
        rf"^\*\*(?P<title>.+?)\*\*, (?P<employer>.+?) \((?P<start>\d{{4}})\s*[–-]\s*{_END}\)$",
        re.I,
    ),
    re.compile(rf"^(?P<start>\d{{4}})\s*[–-]\s*{_END}: (?P<title>.+?), (?P<employer>.+)$", re.I),
)
_PROSE_JOB = re.compile(
    r"(?:worked as|is an?) (?P<title>[^.]+?) at (?P<employer>[^.]+?) "
    r"(?:since (?P<since>\d{4})|from (?P<start>\d{4}) to (?P<end>\d{4}))"
)
_PROSE_EDU = re.compile(
    r"(?:Holds|Also holds) an? (?P<degree>.+?)(?: in (?P<field>.+?))? from (?P<institution>.+?)"
    r"(?: \((?P<year>\d{4})\))?\.(?= |$)"
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
_PIECE_SEPARATOR = r" \| | · |\s+•\s+"
_KV = re.compile(r"^(?P<label>[A-Za-z][A-Za-z .\-]{0,30}?)\s*:\s*(?P<value>.*)$")


def extract_resume(text: str) -> dict[str, Any]:
    """Extract the bundled resume schema's fields from a resume text by rules.

    Never raises on odd input: fields the rules cannot find are null or empty lists, and the
    result always validates against the ``resume`` schema (OpenAI strict shape).
    """
    found: dict[str, Any] = {}
    if isinstance(text, str) and text.strip():
        try:
            found = _extract(text[:_MAX_CHARS])
        except (ValueError, IndexError, KeyError, TypeError, RecursionError):
            # A rule that trips on a strange text must not take the emulator down; an empty
            # (still valid) extraction is the honest answer for text the rules cannot read.
            found = {}
    return _conform(found)


# -- the parse -----------------------------------------------------------------------------------


def _extract(text: str) -> dict[str, Any]:
    """Parse a resume text into a loose dict of the schema's fields."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    lines = [line.rstrip() for line in text.split("\n")]
    sections: dict[str, list[str]] = {"top": []}
    labelled: dict[str, str] = {}
    current = "top"
    structured = False
    for raw in lines:
        line = raw.strip()
        if not line or re.fullmatch(r"[=\-_~*]{3,}", line):
            continue
        kind = _header_kind(line)
        if kind is not None:
            structured = True
            current = kind
            sections.setdefault(current, [])
            continue
        # A contact line holds several pieces ("Phone: 1 | a@b.c | Lyon"): keep it whole.
        joined = current == "top" and re.search(_PIECE_SEPARATOR, line) is not None
        label_match = None if joined else _KV.match(_BULLET.sub("", line))
        if label_match:
            label = label_match.group("label").strip().lower()
            field = _LABELS.get(label)
            if field is not None:
                structured = True
                labelled.setdefault(field, label_match.group("value").strip())
                continue
        sections[current].append(raw)
    body = "\n".join(sections.get("top", []) + _all_but(sections, ("top", "references")))
    searchable = "\n".join(
        line for name, block in sections.items() if name != "references" for line in block
    ) + "\n" + "\n".join(labelled.values())

    if not structured:
        return _extract_prose(text)

    result: dict[str, Any] = {}
    result["full_name"] = _value(labelled.get("full_name")) or _name_from_top(sections["top"])
    result["email"] = _email(labelled.get("email"), searchable)
    result["phone"] = _phone(labelled.get("phone"), searchable)
    result["location"] = _value(labelled.get("location")) or _location_from_top(sections["top"])
    result["years_experience"] = _years(labelled.get("years_experience"), body)
    result["work_history"] = _jobs(sections.get("experience", []))
    result["education"] = _education(sections.get("education", []))
    result["skills"] = _list(labelled.get("skills"), sections.get("skills", []))
    result["certifications"] = _list(
        labelled.get("certifications"), sections.get("certifications", [])
    )
    languages = _list(labelled.get("languages"), sections.get("languages", []))
    result["languages"] = [_strip_level(item) for item in languages]
    summary_lines = [line.strip() for line in sections.get("summary", [])]
    result["summary"] = _value(labelled.get("summary")) or (" ".join(summary_lines) or None)
    title, employer = _current(result["work_history"], labelled, sections["top"])
    result["current_title"], result["current_employer"] = title, employer
    return result


def _all_but(sections: dict[str, list[str]], skip: Sequence[str]) -> list[str]:
    """Return every line of every section but the skipped ones."""
    return [line for name, block in sections.items() if name not in skip for line in block]


def _header_kind(line: str) -> str | None:
    """Return the section a header line opens ("experience"...), or None for other lines."""
    if len(line) > 40:
        return None
    word = line.lstrip("#").strip().rstrip(":").strip().lower()
    return _HEADERS.get(word)


def _value(raw: str | None) -> str | None:
    """Return a labelled value, or None for the ways people write "nothing" (n/a, -)."""
    if raw is None:
        return None
    value = raw.strip()
    return None if value.lower() in _EMPTY_VALUES else value


def _name_from_top(top: Sequence[str]) -> str | None:
    """Return the first top line that looks like a name (no digits, no @, a few words)."""
    for raw in top[:5]:
        line = _BULLET.sub("", raw.strip()).lstrip("#").strip()
        if not line or line.lower() in _TITLE_WORDS:
            continue
        if (
            len(line) <= 80
            and not re.search(r"[\d@:|/\\<>{}]", line)
            and 1 <= len(line.split()) <= 6
            and any(ch.isalpha() for ch in line)
            and " at " not in line
        ):
            return line
        return None
    return None


def _email(labelled: str | None, text: str) -> str | None:
    """Return the labelled email, else the first address in the text (references cut)."""
    if labelled is not None:
        match = _EMAIL.search(labelled)
        if match:
            return match.group(0)
    match = _EMAIL.search(text)
    return match.group(0) if match else None


def _phone_in(text: str) -> str | None:
    """Return the first phone-like number: 7+ digits, not a bare year or year range."""
    for match in _PHONE.finditer(text):
        candidate = match.group(0).strip(" .-")
        digits = re.sub(r"\D", "", candidate)
        if len(digits) < 7 or len(digits) > 15 or _YEAR_RANGE_ONLY.match(candidate):
            continue
        start = match.start()
        if (start > 0 and text[start - 1] in "@._") or "@" in text[match.end(): match.end() + 1]:
            continue
        return candidate
    return None


def _phone(labelled: str | None, text: str) -> str | None:
    """Return the labelled phone, else the first phone-like number in the text."""
    if labelled is not None:
        value = _value(labelled)
        return _phone_in(value) if value else None
    return _phone_in(text)


def _contact_pieces(top: Sequence[str]) -> list[str]:
    """Split the contact block (lines before the first section) into labelled pieces."""
    pieces: list[str] = []
    for raw in top:
        line = _BULLET.sub("", raw.strip())
        pieces.extend(p.strip() for p in re.split(_PIECE_SEPARATOR, line) if p.strip())
    return pieces


def _location_from_top(top: Sequence[str]) -> str | None:
    """Return the contact piece that is a place: labelled, or "City, Region" shaped."""
    for piece in _contact_pieces(top):
        for prefix in ("📍", "Location:", "Based in", "Address:"):
            if piece.startswith(prefix):
                return piece[len(prefix):].strip() or None
    for piece in _contact_pieces(top):
        if _EMAIL.search(piece) or _phone_in(piece) or _YEARS.search(piece) or " at " in piece:
            continue
        if re.fullmatch(r"[^,\d@]{2,60}, [^,\d@]{2,60}", piece):
            return piece
    return None


def _years(labelled: str | None, text: str) -> float | None:
    """Return the stated years of experience, or None when the text states none."""
    if labelled is not None:
        match = re.search(r"\d{1,2}(?:\.\d+)?", labelled)
        if match:
            return float(match.group(0))
    match = _YEARS.search(text)
    if match:
        return float(match.group("a") or match.group("b"))
    return None


def _year_or_none(value: str | None) -> int | None:
    """Return a four-digit year as an int; words like "present" become None."""
    if value and value.isdigit() and len(value) == 4:
        return int(value)
    return None


def _jobs(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse the experience section: one position per line that matches a known style."""
    jobs = []
    for raw in lines:
        line = _BULLET.sub("", raw.strip()).strip()
        for pattern in _JOB_PATTERNS:
            match = pattern.match(line)
            if match:
                jobs.append({
                    "employer": match.group("employer").strip(),
                    "title": match.group("title").strip(),
                    "start_year": _year_or_none(match.group("start")),
                    "end_year": _year_or_none(match.group("end")),
                })
                break
    return jobs


def _education(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Parse the education section: "Degree in Field, School, 2012" or "Degree, Field — School"."""
    entries = []
    for raw in lines:
        line = _BULLET.sub("", raw.strip()).strip()
        if not line:
            continue
        if " — " in line:
            head, _, tail = line.partition(" — ")
            match = re.fullmatch(r"(?P<inst>.+?)(?: \((?P<year>\d{4})\))?", tail)
            degree, _, field = head.partition(", ")
            institution = match.group("inst") if match else tail
            year = match.group("year") if match else None
        else:
            parts = line.split(", ")
            year = parts.pop() if len(parts) > 2 and re.fullmatch(r"\d{4}", parts[-1]) else None
            if len(parts) < 2:
                continue
            degree, _, field = parts[0].partition(" in ")
            institution = ", ".join(parts[1:])
        entries.append({
            "institution": institution.strip() or None,
            "degree": degree.strip() or None,
            "field": field.strip() or None,
            "graduation_year": _year_or_none(year),
        })
    return entries


def _split_items(text: str) -> list[str]:
    """Split one line of items on the separator it uses (; · | or ,)."""
    for separator in ("; ", " · ", " | ", ", "):
        if separator in text:
            return [item.strip() for item in text.split(separator) if item.strip()]
    return [text.strip()] if text.strip() else []


def _list(labelled: str | None, lines: Sequence[str]) -> list[str]:
    """Return list items from a labelled value, or a section (one line or one per line)."""
    if labelled is not None:
        value = _value(labelled)
        return _split_items(value) if value else []
    items: list[str] = []
    for raw in lines:
        line = raw.strip()
        if _BULLET.match(line):
            items.append(_BULLET.sub("", line).strip())
        else:
            items.extend(_split_items(line))
    return [item for item in items if item]


def _strip_level(language: str) -> str:
    """Drop a level from a language: "French (fluent)" or "French - B2" -> "French"."""
    language = re.sub(r"\s*\([^)]*\)\s*$", "", language)
    return re.sub(r"\s+[–-]\s+.*$", "", language).strip()


def _current(
    jobs: Sequence[dict[str, Any]], labelled: dict[str, str], top: Sequence[str]
) -> tuple[str | None, str | None]:
    """Return the current title and employer: a position with no end, else the labels."""
    if jobs:
        first = jobs[0]
        if first["end_year"] is None:
            return first["title"], first["employer"]
        return None, None
    position = _value(labelled.get("current_position"))
    if position and " at " in position:
        title, _, employer = position.partition(" at ")
        return title.strip(), employer.strip()
    labelled_title = _value(labelled.get("current_title"))
    labelled_employer = _value(labelled.get("current_employer"))
    if labelled_title or labelled_employer:
        return labelled_title, labelled_employer
    for piece in _contact_pieces(top[1:3]):
        if " at " in piece and not _EMAIL.search(piece):
            title, _, employer = piece.partition(" at ")
            return title.strip(), employer.strip()
    return None, None


def _join_split(text: str) -> list[str]:
    """Split prose lists: "a, b and c" -> [a, b, c]."""
    head, sep, last = text.rpartition(" and ")
    parts = [*head.split(", "), last] if sep else text.split(", ")
    return [part.strip() for part in parts if part.strip()]


def _extract_prose(text: str) -> dict[str, Any]:
    """Parse the one-paragraph layout: "<name> is a <title> at <employer> since <year>..."."""
    flat = " ".join(text.split())
    result: dict[str, Any] = {}
    name = re.match(r"^(?P<name>\S.{0,80}?) is (?:an? |a professional)", flat)
    result["full_name"] = name.group("name") if name else None
    result["email"] = _email(None, flat)
    result["phone"] = _phone_in(flat)
    location = re.search(r" based in (?P<loc>.{1,80}?)(?:, with \d|\.(?: |$))", flat)
    result["location"] = location.group("loc") if location else None
    result["years_experience"] = _years(None, flat)
    jobs = []
    for match in _PROSE_JOB.finditer(flat):
        jobs.append({
            "employer": match.group("employer"),
            "title": match.group("title"),
            "start_year": _year_or_none(match.group("since") or match.group("start")),
            "end_year": _year_or_none(match.group("end")),
        })
    result["work_history"] = jobs
    result["education"] = [
        {
            "institution": match.group("institution"),
            "degree": match.group("degree"),
            "field": match.group("field"),
            "graduation_year": _year_or_none(match.group("year")),
        }
        for match in _PROSE_EDU.finditer(flat)
    ]
    skills = re.search(r"Key skills: (?P<items>.+?)\.(?= [A-Z]|$)", flat)
    result["skills"] = _join_split(skills.group("items")) if skills else []
    certs = re.search(r"Holds the certifications? (?P<items>.+?)\.(?= [A-Z]|$)", flat)
    result["certifications"] = _join_split(certs.group("items")) if certs else []
    languages = re.search(r"Speaks (?P<items>.+?)\.(?= [A-Z]|$)", flat)
    result["languages"] = _join_split(languages.group("items")) if languages else []
    summary = re.search(r"In their own words: (?P<summary>.+)$", flat)
    result["summary"] = summary.group("summary") if summary else None
    current = jobs[0] if jobs and jobs[0]["end_year"] is None else None
    result["current_title"] = current["title"] if current else None
    result["current_employer"] = current["employer"] if current else None
    return result


# -- making the result valid ---------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """Return a trimmed string (cut to a sane length) or None."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:_MAX_FIELD_CHARS] if value else None


def _int_year(value: Any) -> int | None:
    """Return a plausible year as an int, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 1900 <= value <= 2100:
        return value
    return None


def _texts(values: Any) -> list[str]:
    """Return a list of distinct non-empty strings, in order."""
    out: list[str] = []
    for value in values if isinstance(values, list) else []:
        text = _text(value)
        if text and text not in out:
            out.append(text)
    return out[:_MAX_ITEMS]


def _conform(found: dict[str, Any]) -> dict[str, Any]:
    """Return exactly the schema's fields with the schema's types, whatever ``found`` holds."""
    years = found.get("years_experience")
    result: dict[str, Any] = {name: _text(found.get(name)) for name in _STRING_FIELDS}
    result["years_experience"] = (
        float(years) if isinstance(years, int | float) and not isinstance(years, bool) else None
    )
    for name in _LIST_FIELDS:
        result[name] = _texts(found.get(name))
    result["education"] = [
        {
            "institution": _text(entry.get("institution")),
            "degree": _text(entry.get("degree")),
            "field": _text(entry.get("field")),
            "graduation_year": _int_year(entry.get("graduation_year")),
        }
        for entry in found.get("education") or []
        if isinstance(entry, dict)
    ][:_MAX_ITEMS]
    result["work_history"] = [
        {
            "employer": _text(entry.get("employer")),
            "title": _text(entry.get("title")),
            "start_year": _int_year(entry.get("start_year")),
            "end_year": _int_year(entry.get("end_year")),
        }
        for entry in found.get("work_history") or []
        if isinstance(entry, dict)
    ][:_MAX_ITEMS]
    order = (
        "full_name", "email", "phone", "location", "current_title", "current_employer",
        "years_experience", "skills", "education", "work_history", "certifications",
        "languages", "summary",
    )
    return {name: result[name] for name in order}
