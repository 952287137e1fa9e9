"""Benchmark the CPU- and memory-bound parts, each against a plain baseline in the same run.

The figures the unit and integration tests used to assert as wall-clock limits live here,
printed and never asserted (the machines are noisy; only a ratio in one run means something):

1. parse: ResultParser.parse_line on chat result lines against orjson decoding the same line
   and its answer (the least any parser does);
2. render: RequestRenderer.render of ~4.5 KB rows against str.format plus orjson.dumps of the
   same request body;
3. tokens: estimate_tokens on a 400 KB text against encoding it to UTF-8 (one pass);
4. extract: the emulator's rule extraction of a ~2 MB resume (and 3 MB of one line of prose)
   against one regex pass over the same text;
5. resumes: fill_database of N generated resumes on SQLite against generating them alone;
6. stream: the emulator process's peak RSS growth over a 50 MB upload and download against the
   file's size (the files stream through disk, so the growth should be a small fraction).

    .venv/bin/python scripts/bench_parts.py            # the full sizes (a minute or so)
    .venv/bin/python scripts/bench_parts.py --smoke    # seconds; what the test suite runs
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.emulator.resume import extract_resume  # noqa: E402
from engine.job import ColumnMapping, JobSpec, SourceSpec  # noqa: E402
from engine.requests import RequestRenderer  # noqa: E402
from engine.results import ResultParser, Success  # noqa: E402
from engine.resumes_data import fill_database, generate, make_resume  # noqa: E402
from engine.store.models import ClaimedItem  # noqa: E402
from engine.tokens import estimate_tokens  # noqa: E402
from tests.integration.helpers import write_embedding_input  # noqa: E402

MB = 1024 * 1024
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "years": {"type": "integer"},
        "skills": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "years", "skills"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class Sizes:
    """How much each part processes."""

    parse_lines: int
    render_rows: int
    token_chars: int
    extract_copies: int  # copies of one generated resume (plus filler) in the huge text
    resumes: int
    stream_mb: int


SIZES = {
    "full": Sizes(5000, 2000, 400_000, 300, 10_000, 50),
    "smoke": Sizes(200, 100, 20_000, 5, 100, 2),
}


def make_job() -> JobSpec:
    """Return a two-text-column extraction job with a strict schema."""
    return JobSpec(
        name="cv",
        source=SourceSpec(table="candidates", key_column="id",
                          text_columns=("resume", "notes"), processed_column="done_at"),
        model="gpt-4o-mini",
        system_prompt="Extract the fields.",
        user_template="Resume:\n{resume}\nNotes: {notes}",
        output_schema=SCHEMA,
        columns=(ColumnMapping(field="name", column="name"),
                 ColumnMapping(field="years", column="years", kind="int"),
                 ColumnMapping(field="skills", column="skills", kind="json")),
    )


def best_of(runs: int, work: Callable[[], object]) -> float:
    """Return the fastest of ``runs`` timings of ``work`` in seconds (the least disturbed)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def report(part: str, what: str, seconds: float, base_what: str, base: float) -> float:
    """Print one part's line: both timings and their ratio; return the ratio."""
    ratio = seconds / base if base > 0 else float("inf")
    print(f"{part:8} {what}: {seconds * 1000:9.1f} ms   {base_what}: {base * 1000:9.1f} ms   "
          f"x{ratio:.1f}", flush=True)
    return ratio


# -- the parts ---------------------------------------------------------------------------------


def chat_line(i: int) -> bytes:
    """One successful chat result line whose answer fits SCHEMA."""
    answer = orjson.dumps({"name": f"Person {i}", "years": i % 40, "skills": ["a", "b"]})
    body = {
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer.decode()}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20},
    }
    return orjson.dumps({"id": "batch_req_1", "custom_id": f"cv|0|{i}",
                         "response": {"status_code": 200, "body": body}, "error": None})


def part_parse(sizes: Sizes) -> float:
    """parse_line against bare orjson decoding of the line and its answer."""
    parser = ResultParser(make_job())
    lines = [chat_line(i) for i in range(sizes.parse_lines)]
    outcomes = [parser.parse_line(line) for line in lines]
    if not all(isinstance(o, Success) for o in outcomes):
        raise RuntimeError("parse: a line did not parse as a success")

    def baseline() -> None:
        for line in lines:
            orjson.loads(orjson.loads(line)["response"]["body"]["choices"][0]["message"]["content"])

    return report("parse", f"parse_line x{len(lines)}",
                  best_of(3, lambda: [parser.parse_line(line) for line in lines]),
                  "orjson.loads line+answer", best_of(3, baseline))


def part_render(sizes: Sizes) -> float:
    """Time render against str.format plus orjson.dumps of the same body."""
    job = make_job()
    renderer = RequestRenderer(job)
    rows = [ClaimedItem(key=str(i), claim_token="tok", attempts=0,
                        row={"resume": "Experienced engineer. " * 200, "notes": "n"})
            for i in range(sizes.render_rows)]
    total = sum(len(renderer.render(r, 0).line) for r in rows)
    if total < sizes.render_rows * 4000:
        raise RuntimeError(f"render: {total} bytes for {sizes.render_rows} rows of ~4.5 KB")

    def baseline() -> None:
        for r in rows:
            orjson.dumps({"custom_id": r.key, "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": job.model, "messages": [
                              {"role": "system", "content": job.system_prompt},
                              {"role": "user", "content": job.user_template.format(**r.row)}],
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "x", "schema": SCHEMA, "strict": True}}}})

    return report("render", f"render x{len(rows)}",
                  best_of(3, lambda: [renderer.render(r, 0) for r in rows]),
                  "format+orjson.dumps", best_of(3, baseline))


def part_tokens(sizes: Sizes) -> float:
    """estimate_tokens against one UTF-8 encode of the same text."""
    text = ("Résumé: 10 years of Python, 数据 engineering. " * (sizes.token_chars // 40 + 1))
    text = text[:sizes.token_chars]
    return report("tokens", f"estimate_tokens {len(text)} chars",
                  best_of(5, lambda: estimate_tokens(text)),
                  "str.encode", best_of(5, lambda: text.encode("utf-8")))


def part_extract(sizes: Sizes) -> float:
    """extract_resume of a huge resume against one regex pass over it."""
    resume = make_resume(3, 0).text
    huge = (resume + "\n" + "lorem ipsum dolor 2019-2020 " * 200 + "\n") * sizes.extract_copies
    prose = "Someone is a professional based in " + "x" * (sizes.extract_copies * 10_000)
    words = re.compile(r"\S+")
    ratio = report("extract", f"extract_resume {len(huge) / MB:.1f} MB",
                   best_of(1, lambda: extract_resume(huge)),
                   "one regex pass", best_of(1, lambda: words.findall(huge)))
    report("extract", f"extract_resume {len(prose) / MB:.1f} MB one-line prose",
           best_of(1, lambda: extract_resume(prose)),
           "one regex pass", best_of(1, lambda: words.findall(prose)))
    return ratio


def part_resumes(sizes: Sizes, tmp: Path) -> float:
    """fill_database on SQLite against generating the same resumes alone."""
    db = tmp / "resumes.db"
    filled = fill_database(f"Driver=SQLite3;Database={db}", sizes.resumes, seed=9)
    if filled.rows != sizes.resumes:
        raise RuntimeError(f"resumes: {filled.rows} of {sizes.resumes} rows written")

    def generated() -> None:
        for resume in generate(sizes.resumes, seed=9):
            json.dumps(resume.truth, ensure_ascii=False, separators=(",", ":"))

    return report("resumes", f"fill_database {sizes.resumes} rows (SQLite)", filled.seconds,
                  "generate alone", best_of(1, generated))


async def _stream(sizes: Sizes, tmp: Path) -> float:
    """Upload and download through an emulator process; print its RSS growth per direction."""
    import aiohttp
    import openai

    source = tmp / "big.jsonl"
    want = write_embedding_input(source, sizes.stream_mb * MB)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.emulator", "--port", "0", "--seed", "3",
        stdout=asyncio.subprocess.PIPE, cwd=str(ROOT),
    )
    client: openai.AsyncOpenAI | None = None

    async def stats(root: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{root}/_emulator/stats") as r:
            found: dict[str, Any] = await r.json()
        return found

    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        base_url = first.removeprefix("EMULATOR_URL=")
        root = base_url.removesuffix("/v1")
        before = await stats(root)
        client = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0,
                                    timeout=120)
        with source.open("rb") as fh:
            uploaded = await client.files.create(file=("big.jsonl", fh), purpose="batch")
        after_upload = await stats(root)
        digest = hashlib.sha256()
        async with client.files.with_streaming_response.content(uploaded.id) as response:
            async for chunk in response.iter_bytes():
                digest.update(chunk)
        if digest.hexdigest() != want:
            raise RuntimeError("stream: the downloaded file differs from the upload")
        after_download = await stats(root)
    finally:
        if client is not None:
            await client.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    file_mb = source.stat().st_size / MB
    worst = 0.0
    for label, found in (("upload", after_upload), ("download", after_download)):
        growth = (found["peak_rss_kb"] - before["rss_kb"]) / 1024
        worst = max(worst, growth / file_mb)
        print(f"stream   emulator peak RSS growth after {label}: {growth:6.1f} MB   "
              f"file: {file_mb:6.1f} MB   x{growth / file_mb:.2f}", flush=True)
    return worst


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts; print one line per figure and a one-line summary last."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (tests)")
    parser.add_argument("--parts", default="parse,render,tokens,extract,resumes,stream",
                        help="which parts to run (comma-separated)")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    sizes = SIZES[mode]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp_name:
        tmp = Path(tmp_name)
        runners: dict[str, Callable[[], float]] = {
            "parse": lambda: part_parse(sizes),
            "render": lambda: part_render(sizes),
            "tokens": lambda: part_tokens(sizes),
            "extract": lambda: part_extract(sizes),
            "resumes": lambda: part_resumes(sizes, tmp),
            "stream": lambda: asyncio.run(_stream(sizes, tmp)),
        }
        for part in parts:
            if part not in runners:
                parser.error(f"unknown part {part!r}; choose from {', '.join(runners)}")
            ratios[part] = runners[part]()
    print(f"summary {mode}: " + "; ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
