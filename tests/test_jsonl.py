"""The app's own JSON Lines files go through `jsonlines`: written one object per line, read back with bad lines
either skipped (metrics.jsonl after a kill) or reported by line number."""

from __future__ import annotations

import json

import pytest

from core.jsonl import read_objects, to_jsonl
from core.metrics import JsonlSink, MetricPoint
from core.runs import METRICS_FILE, read_metrics


def test_to_jsonl_writes_one_unescaped_object_per_line():
    text = to_jsonl([{"answer": "Ça va — 東京"}, {"n": 1}])
    assert text == '{"answer": "Ça va — 東京"}\n{"n": 1}\n'
    assert to_jsonl([]) == ""


def test_metrics_sink_and_reader_round_trip_and_skip_a_torn_line(tmp_path):
    sink = JsonlSink(tmp_path / METRICS_FILE)
    sink.on_metric(MetricPoint("train", step=1, total_steps=2, loss=1.5))
    with open(tmp_path / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write('{"kind": "train", "step": 2, "lo')  # killed mid-line
    sink = JsonlSink(tmp_path / METRICS_FILE)  # reopened: the torn line is closed off
    sink.on_metric(MetricPoint("train", step=2, total_steps=2, loss=float("nan")))
    lines = (tmp_path / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["loss"] == "nan"
    assert [record["step"] for record in read_metrics(tmp_path)] == [1, 2]


def test_read_objects_names_the_bad_line(tmp_path):
    path = tmp_path / "comparison.jsonl"
    path.write_text('{"a": 1}\n\n{"b": 2}\n[3]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"comparison.jsonl: line 4 is not a JSON object: '\[3\]'"):
        read_objects(path)
    assert read_objects(path, skip_invalid=True) == [{"a": 1}, {"b": 2}]
    assert read_objects(tmp_path / "missing.jsonl") == []
