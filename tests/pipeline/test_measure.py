"""Latency targets: one parser and one registry for the CLI, recipes, gates and search."""

from __future__ import annotations

import pytest

from edgefold.errors import EdgefoldError
from edgefold.measure import (ArtifactRunner, EstimateRunner, LatencyTarget, OnnxruntimeRunner, create,
                              parse_latency_target)


@pytest.mark.parametrize("text, kind, runner, compiled", [
    ("onnxruntime", "onnxruntime", OnnxruntimeRunner, False),
    ("host", "host", ArtifactRunner, True),
    ("estimate", "estimate", EstimateRunner, False),
    ("rpc://127.0.0.1:9190/phone", "rpc", ArtifactRunner, True),
])
def test_each_target_parses_to_its_runner(text, kind, runner, compiled):
    target = parse_latency_target(text)
    assert (target.kind, target.spelling, target.needs_compile) == (kind, text, compiled)
    assert type(create(text)) is runner and create(target).target == target


def test_tvm_is_an_alias_of_host_that_keeps_its_spelling():
    tvm, host = parse_latency_target("tvm"), parse_latency_target("host")
    assert tvm.kind == host.kind == "host" and tvm.name == host.name == "host"
    assert str(tvm) == "tvm"  # gates and reports key on the recipe's own spelling
    assert tvm.needs_compile


def test_rpc_url_round_trips():
    target = parse_latency_target("rpc://tracker.lan:9000/rk3588")
    assert target.rpc == ("tracker.lan", 9000, "rk3588")
    assert target.rpc.url == target.name == "rpc://tracker.lan:9000/rk3588"
    assert parse_latency_target(target.name) == target
    assert target == LatencyTarget("rpc", "rpc://tracker.lan:9000/rk3588", target.rpc)


@pytest.mark.parametrize("bad", ["phone", "rpc", "TVM", "", "host "])
def test_unknown_names_are_one_line_errors(bad):
    with pytest.raises(EdgefoldError) as error:
        parse_latency_target(bad, where=" in [gates.max_latency_ms]")
    message = str(error.value)
    assert "\n" not in message and f"unknown latency target {bad!r} in [gates.max_latency_ms]" in message
    assert "onnxruntime" in message and "rpc://TRACKER:PORT/KEY" in message


def test_bad_rpc_address_names_the_syntax():
    with pytest.raises(EdgefoldError, match="rpc://TRACKER_HOST:PORT/KEY"):
        parse_latency_target("rpc://nowhere")
