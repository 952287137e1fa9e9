"""Rule extraction of the generated resumes: accurate on them, schema-valid on anything."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from engine.emulator.resume import RESUME_SCHEMA_NAME, extract_resume
from engine.jobfile import load_job
from engine.resumes_data import SCORED_FIELDS, generate, make_resume, score_fields


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = load_job("resumes").spec.output_schema
    assert schema is not None
    return Draft202012Validator(schema)


def assert_valid(validator: Draft202012Validator, value: dict[str, Any]) -> None:
    errors = [e.message for e in validator.iter_errors(value)]
    assert not errors, errors


def test_schema_name_matches_the_bundled_job() -> None:
    assert RESUME_SCHEMA_NAME == "resume" == load_job("resumes").spec.schema_name


def test_accuracy_on_500_generated_resumes(validator: Draft202012Validator) -> None:
    right: Counter[str] = Counter()
    layouts: Counter[str] = Counter()
    n = 500
    for resume in generate(n, seed=11):
        layouts[resume.layout] += 1
        extracted = extract_resume(resume.text)
        assert_valid(validator, extracted)
        for name, ok in score_fields(resume.truth, extracted).items():
            right[name] += ok
    accuracy = {name: right[name] / n for name in SCORED_FIELDS}
    print("field accuracy:", {k: round(v, 3) for k, v in accuracy.items()})
    assert len(layouts) == 4  # every layout was exercised
    for name in ("full_name", "email", "phone"):
        assert accuracy[name] >= 0.95, (name, accuracy[name])
    for name in SCORED_FIELDS:
        assert accuracy[name] >= 0.90, (name, accuracy[name])


def test_ground_truth_itself_validates(validator: Draft202012Validator) -> None:
    for resume in generate(300, seed=2):
        assert_valid(validator, resume.truth)


def test_generated_set_is_varied() -> None:
    resumes = list(generate(600, seed=0))
    truths = [r.truth for r in resumes]
    texts = [r.text for r in resumes]
    assert any(t["email"] is None for t in truths)
    assert any(t["phone"] is None for t in truths)
    assert any(t["location"] is None for t in truths)
    assert any(t["current_title"] is None for t in truths)
    assert any(not t["education"] for t in truths)
    names = "".join(t["full_name"] for t in truths)
    for char_range in ((0x4E00, 0x9FFF), (0x0600, 0x06FF), (0x0590, 0x05FF), (0xC0, 0x17F)):
        assert any(char_range[0] <= ord(ch) <= char_range[1] for ch in names), char_range
    joined = "".join(texts)
    for odd in ("🚀", '"', "{", "}", "\t", "\r\n", "'"):
        assert odd in joined, repr(odd)
    lengths = sorted(len(t) for t in texts)
    assert lengths[0] < 600
    assert lengths[-1] > 8000


def test_same_seed_same_resume_whatever_the_row_count() -> None:
    assert make_resume(17, 5) == make_resume(17, 5)
    assert list(generate(20, seed=5))[16] == make_resume(17, 5)
    assert make_resume(17, 5).text != make_resume(17, 6).text


def test_missing_contact_fields_are_null() -> None:
    text = "Name: Zoë Müller\nEmail: n/a\nPhone: -\nSkills: Python; SQL\nLanguages: German"
    got = extract_resume(text)
    assert got["full_name"] == "Zoë Müller"
    assert got["email"] is None
    assert got["phone"] is None
    assert got["skills"] == ["Python", "SQL"]
    assert got["languages"] == ["German"]


def test_references_do_not_leak_into_contact_fields() -> None:
    text = (
        "דוד כהן\r\nTel Aviv, Israel\r\n\r\nEXPERIENCE\r\nData Engineer at Hooli (2019-Present)\r\n"
        "\r\nREFERENCES\r\nJane Roe — jane.roe@referee.example, +1 (212) 555-0100\r\n"
    )
    got = extract_resume(text)
    assert got["full_name"] == "דוד כהן"
    assert got["email"] is None
    assert got["phone"] is None
    assert got["location"] == "Tel Aviv, Israel"
    assert (got["current_title"], got["current_employer"]) == ("Data Engineer", "Hooli")
    assert got["work_history"] == [
        {"employer": "Hooli", "title": "Data Engineer", "start_year": 2019, "end_year": None}
    ]


def test_year_ranges_are_not_phones() -> None:
    text = "Ana Núñez\nEXPERIENCE\nChef de Cuisine at Initech (2015-2019)\nSKILLS\nPastry"
    got = extract_resume(text)
    assert got["phone"] is None
    assert got["work_history"][0]["end_year"] == 2019
    assert got["current_title"] is None


def junk_inputs() -> list[str]:
    rng = random.Random(1234)
    alphabet = "abcXYZ019 \t\n:;,.-—|•#*@+()[]{}\"'\\/é中ש🚀\u200f\x00"
    junk = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 3000))) for _ in range(40)]
    return [
        "",
        "   \n\t\r\n  ",
        "\x00\x01\x02",
        "🚀" * 1000,
        "SKILLS\nEXPERIENCE\nEDUCATION\nLANGUAGES\n",
        "Name:\nEmail:\nPhone:\nYears of experience: lots\nEducation:\n- , , ,\n- — ()",
        "Education:\n- MBA, 9999\n- , MIT, 1066\nExperience:\n- 0000–2020: a, b",
        "x is a y at z since 1234. Holds a from . Key skills: . Speaks .",
        "{resume_text} {{}} }{ " * 50,
        "Email: " + "a" * 100 + "@" + "b" * 100 + ".com",
        "1" * 10_000,
        "+1 " * 5000,
        *junk,
    ]


@pytest.mark.parametrize("index", range(len(junk_inputs())))
def test_any_text_gives_a_valid_answer(validator: Draft202012Validator, index: int) -> None:
    assert_valid(validator, extract_resume(junk_inputs()[index]))


def test_empty_text_gives_nulls_and_empty_lists() -> None:
    got = extract_resume("")
    assert all(got[name] is None for name in ("full_name", "email", "phone", "summary"))
    assert all(got[name] == [] for name in ("skills", "education", "work_history"))


def test_huge_input_is_valid(validator: Draft202012Validator) -> None:
    # The speed of this is scripts/bench_parts.py's "extract" figure, against a baseline.
    resume = make_resume(3, 0).text
    huge = (resume + "\n" + "lorem ipsum dolor 2019-2020 " * 200 + "\n") * 300  # ~2 MB
    assert_valid(validator, extract_resume(huge))
    prose_huge = "Someone is a professional based in " + "x" * 3_000_000
    assert_valid(validator, extract_resume(prose_huge))
