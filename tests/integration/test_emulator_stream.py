"""Large files stream through disk: the emulator's own process (started with its CLI) must not
grow by the size of a 50 MB upload or download."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.integration.helpers import write_embedding_input

MB = 1024 * 1024


async def server_memory(root: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{root}/_emulator/stats") as r:
        stats: dict[str, Any] = await r.json()
    return stats


@pytest.mark.slow
async def test_cli_serves_and_50mb_upload_download_stay_out_of_memory(tmp_path: Path):
    source = tmp_path / "big.jsonl"
    want = write_embedding_input(source, 50 * MB)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.emulator", "--port", "0", "--seed", "3",
        stdout=asyncio.subprocess.PIPE,
    )
    client: openai.AsyncOpenAI | None = None
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
        assert first.startswith("EMULATOR_URL=http://127.0.0.1:")
        base_url = first.removeprefix("EMULATOR_URL=")
        root = base_url.removesuffix("/v1")
        before = await server_memory(root)
        client = openai.AsyncOpenAI(api_key="test", base_url=base_url, max_retries=0,
                                    timeout=120)
        with source.open("rb") as fh:
            uploaded = await client.files.create(file=("big.jsonl", fh), purpose="batch")
        assert uploaded.bytes == source.stat().st_size
        after_upload = await server_memory(root)

        digest = hashlib.sha256()
        async with client.files.with_streaming_response.content(uploaded.id) as response:
            async for chunk in response.iter_bytes():
                digest.update(chunk)
        assert digest.hexdigest() == want
        after_download = await server_memory(root)

        for label, stats in (("upload", after_upload), ("download", after_download)):
            growth_mb = (stats["peak_rss_kb"] - before["rss_kb"]) / 1024
            # Printed only: scripts/bench_parts.py's "stream" figure is the measurement.
            print(f"server peak RSS growth after {label}: {growth_mb:.1f} MB")
    finally:
        if client is not None:
            await client.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
