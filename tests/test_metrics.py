"""Metric dataclasses and sinks (no torch)."""

from __future__ import annotations

import io
import json
import math

from core.metrics import (
    CallbackSink,
    ConsoleSink,
    JsonlSink,
    MetricPoint,
    MetricsSink,
    StatusEvent,
    format_duration,
    format_progress_line,
)
from core.runs import read_metrics


def test_jsonl_sink_writes_one_object_per_event(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.on_status(StatusEvent("running", "started", step=0))
    sink.on_metric(MetricPoint(kind="eval", step=0, total_steps=10, eval_loss=3.5))
    sink.on_metric(MetricPoint(kind="train", step=1, total_steps=10, loss=float("nan"), tokens_trained=12))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]  # NaN must not make the file invalid JSON
    assert records[0]["kind"] == "status" and records[0]["state"] == "running"
    assert records[1]["kind"] == "eval" and records[1]["eval_loss"] == 3.5
    assert records[2]["loss"] == "nan" and records[2]["tokens_trained"] == 12


def test_jsonl_sink_repairs_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 1}\n{"kind": "tra')  # killed mid-write
    sink = JsonlSink(path)
    sink.on_metric(MetricPoint(kind="train", step=2))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]


def test_console_sink_non_tty_throttles_but_always_shows_eval():
    stream = io.StringIO()
    sink = ConsoleSink(stream, min_interval=3600)
    sink.on_metric(MetricPoint(kind="train", step=1, total_steps=4, loss=2.0))
    sink.on_metric(MetricPoint(kind="train", step=2, total_steps=4, loss=1.9))  # throttled
    sink.on_metric(MetricPoint(kind="eval", step=2, total_steps=4, eval_loss=1.8))
    sink.on_status(StatusEvent("finished", "done"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert "1/4" in lines[0] and "loss 2.0000" in lines[0]
    assert "eval 1.8000" in lines[1]
    assert lines[2] == "finished: done"


def test_progress_line_contents():
    point = MetricPoint(kind="train", step=5, total_steps=10, loss=1.23456, tokens_per_second=1234.5,
                        eta_seconds=75)
    line = format_progress_line(point, last_eval_loss=2.0)
    assert "[##########----------] 5/10" in line
    assert "loss 1.2346" in line and "eval 2.0000" in line and "1,234 tok/s" in line and "ETA 1:15" in line
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == "?" and format_duration(math.inf) == "?"


def test_callback_sink_and_protocol():
    seen = []
    sink = CallbackSink(on_metric=seen.append, on_status=seen.append)
    assert isinstance(sink, MetricsSink) and isinstance(JsonlSink, type)
    point = MetricPoint(kind="train", step=1)
    event = StatusEvent("stopped", "by user")
    sink.on_metric(point)
    sink.on_status(event)
    CallbackSink().on_metric(point)  # no callables: ignored
    assert seen == [point, event]
