"""Fault injection over real HTTP: line faults and HTTP faults, deterministic under a seed."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from engine.emulator import Emulator, EmulatorConfig, FaultConfig
from engine.errors import ConfigError

LINE_FAULTS = FaultConfig(
    line_error_rate=0.2, line_timeout_rate=0.1, schema_break_rate=0.1, length_rate=0.1
)


async def faulty_kinds(api: Any, n: int = 60) -> dict[str, set[str]]:
    """Run one batch of ``n`` lines and sort its custom_ids by what happened to them."""
    lines = [api.chat_line(f"row-{i}", f"text {i}") for i in range(n)]
    done = await api.wait((await api.submit(lines)).id)
    assert done.status == "completed"
    out = await api.lines(done.output_file_id)
    err = await api.lines(done.error_file_id)
    assert (done.request_counts.completed, done.request_counts.failed) == (len(out), len(err))
    kinds: dict[str, set[str]] = {}
    for line in err:
        if line["response"] is None:
            assert line["error"]["code"] == "request_timeout"
            assert line["error"]["message"]
            kind = "timeout"
        else:
            assert line["error"] is None
            assert set(line["response"]["body"]["error"]) == {"message", "type", "param", "code"}
            kind = f"http_{line['response']['status_code']}"
        kinds.setdefault(kind, set()).add(line["custom_id"])
    for line in out:
        choice = line["response"]["body"]["choices"][0]
        if choice["finish_reason"] == "length":
            kind = "length"
        else:
            value = json.loads(choice["message"]["content"])
            valid = jsonschema.Draft202012Validator(api.SCHEMA).is_valid(value)
            kind = "ok" if valid else "schema_break"
        kinds.setdefault(kind, set()).add(line["custom_id"])
    return kinds


async def test_line_faults_are_deterministic_under_a_seed(make_emu_api: Any):
    first = await faulty_kinds(await make_emu_api(EmulatorConfig(seed=7, faults=LINE_FAULTS)))
    again = await faulty_kinds(await make_emu_api(EmulatorConfig(seed=7, faults=LINE_FAULTS)))
    other = await faulty_kinds(await make_emu_api(EmulatorConfig(seed=8, faults=LINE_FAULTS)))
    assert first == again
    assert first != other
    assert set(first) == {"ok", "http_500", "http_429", "timeout", "schema_break", "length"}
    assert len(first["ok"]) >= 15  # roughly half of 60 lines
    clean = await faulty_kinds(await make_emu_api(EmulatorConfig(seed=7)))
    assert set(clean) == {"ok"}


async def test_retried_line_gets_a_fresh_draw(make_emu_api: Any):
    api = await make_emu_api(EmulatorConfig(seed=1, faults=FaultConfig(line_error_rate=0.5)))
    first = await faulty_kinds(api, 40)
    second = await faulty_kinds(api, 40)  # same custom_ids, second time each
    assert first != second
    failed_twice = (first.get("http_500", set()) | first.get("http_429", set())) & (
        second.get("http_500", set()) | second.get("http_429", set()))
    assert len(failed_twice) < len(first.get("http_500", set()) | first.get("http_429", set()))


async def test_http_faults_and_changing_faults_mid_run(emu_api: Any, emu: Emulator):
    c = emu_api.client
    emu.faults = FaultConfig(http_429_rate=1.0, retry_after_s=0.25)
    with pytest.raises(openai.RateLimitError) as rate:
        await c.batches.list()
    assert rate.value.response.headers["retry-after"] == "0.25"
    assert rate.value.body["code"] == "rate_limit_exceeded"
    emu.faults = FaultConfig(http_500_rate=1.0)
    with pytest.raises(openai.InternalServerError) as err:
        await c.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")
    assert err.value.status_code == 500
    emu.faults = FaultConfig(http_503_rate=1.0)
    with pytest.raises(openai.InternalServerError) as err:
        await c.batches.retrieve("batch_x")
    assert err.value.status_code == 503
    emu.faults = FaultConfig(drop_connection_rate=1.0)
    with pytest.raises(openai.APIConnectionError):
        await c.batches.list()
    emu.faults = FaultConfig()
    assert (await c.batches.list()).data == []
    stats = emu.stats()["counters"]
    assert stats["http_fault_429"] == stats["http_fault_500"] == stats["http_fault_503"] == 1
    assert stats["http_fault_drop"] == 1


async def http_outcomes(api: Any, calls: int) -> list[str]:
    outcomes = []
    for _ in range(calls):
        try:
            await api.client.batches.list()
            outcomes.append("ok")
        except openai.APIStatusError as exc:
            outcomes.append(str(exc.status_code))
        except openai.APIConnectionError:
            outcomes.append("drop")
    return outcomes


async def test_http_faults_are_deterministic_under_a_seed(make_emu_api: Any):
    faults = FaultConfig(http_429_rate=0.2, http_500_rate=0.1, http_503_rate=0.1,
                         drop_connection_rate=0.1)
    first = await http_outcomes(await make_emu_api(EmulatorConfig(seed=5, faults=faults)), 40)
    again = await http_outcomes(await make_emu_api(EmulatorConfig(seed=5, faults=faults)), 40)
    assert first == again
    assert set(first) == {"ok", "429", "500", "503", "drop"}


def test_fault_config_rejects_nonsense():
    with pytest.raises(ConfigError, match="line_error_rate"):
        FaultConfig(line_error_rate=1.5)
    with pytest.raises(ConfigError, match="add up"):
        FaultConfig(line_error_rate=0.6, length_rate=0.6)
    with pytest.raises(ConfigError, match="latency_s"):
        EmulatorConfig(latency_s=-1)


async def test_output_order_is_shuffled_the_same_way_under_a_seed(make_emu_api: Any):
    orders = []
    for seed in (4, 4, 9):
        api = await make_emu_api(EmulatorConfig(seed=seed))
        lines = [api.chat_line(f"o{i}") for i in range(30)]
        done = await api.wait((await api.submit(lines)).id)
        orders.append([x["custom_id"] for x in await api.lines(done.output_file_id)])
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]
    assert orders[0] != sorted(orders[0], key=lambda c: int(c[1:]))
