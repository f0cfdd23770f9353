"""Probe prompts: answers between training steps, in metrics.jsonl, without changing the training."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from core.config import ConfigError, RunConfig
from core.metrics import CallbackSink, ConsoleSink, JsonlSink, MetricPoint, ProbeResult, StatusEvent, emit_probe
from core.probes import load_probe_settings, normalize_probes, word_diff
from core.runs import list_checkpoints, read_metrics, read_probes, read_status

PROMPTS = ["What is 3 plus 3?", "Who wrote Hamlet?"]


@pytest.fixture()
def cfg(tiny_model_dir, tmp_path, isolated_home) -> RunConfig:
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."})
                              for i in range(24)), encoding="utf-8")
    cfg = RunConfig(name="probed")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.0
    cfg.method.method = "lora"
    cfg.method.lora_dropout = 0.1  # dropout draws from the random state the probes must not touch
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = 6, 4, 64, 3
    t.learning_rate, t.warmup_ratio, t.device = 1e-3, 0.0, "cpu"
    return cfg


# --------------------------------------------------------------------------------------------- no torch
def test_word_diff_marks_new_words_and_keeps_the_text():
    pieces = word_diff("It is four.", "It is  eight.\nIndeed")
    assert "".join(piece for piece, _ in pieces) == "It is  eight.\nIndeed"
    assert [piece for piece, changed in pieces if changed] == ["eight.", "Indeed"]
    assert all(not changed for piece, changed in pieces if piece.isspace())
    assert word_diff(None, "a b") == [("a", False), (" ", False), ("b", False)]
    assert word_diff("same words", "same words") == [("same", False), (" ", False), ("words", False)]
    assert word_diff("x", "") == []
    assert [changed for _, changed in word_diff("", "new")] == [True]


def test_probe_prompts_are_checked():
    assert normalize_probes([" a ", "", "b"]) == ["a", "b"]
    assert normalize_probes(None) == []
    with pytest.raises(ConfigError, match="at most 5"):
        normalize_probes([str(i) for i in range(6)])
    with pytest.raises(ConfigError, match="list of prompts"):
        normalize_probes("one string")


def test_sinks_receive_probes_and_old_sinks_still_work(tmp_path):
    result = ProbeResult(step=3, prompt_index=1, prompt="Who wrote\nHamlet?", answer="Shakespeare " * 20,
                         seconds=0.25, n_tokens=24, total_seconds=0.5)
    got: list[ProbeResult] = []

    class OldSink:  # written before probes existed: only on_metric / on_status
        def on_metric(self, point: MetricPoint) -> None: ...

        def on_status(self, event: StatusEvent) -> None: ...

    stream = io.StringIO()
    emit_probe([OldSink(), CallbackSink(on_probe=got.append), JsonlSink(tmp_path / "metrics.jsonl"),
                ConsoleSink(stream=stream), CallbackSink()], result)
    assert got == [result]
    line = stream.getvalue()
    assert line.count("\n") == 1 and "probe 2 @ step 3" in line and "Who wrote Hamlet?" in line
    assert len(line) < 160  # one short line, whatever the answer's length
    (tmp_path / "metrics.jsonl").open("a").write(json.dumps({**result.to_dict(), "answer": "again"}) + "\n")
    (tmp_path / "metrics.jsonl").open("a").write(json.dumps({**result.to_dict(), "step": 0}) + "\n")
    probes = read_probes(tmp_path)
    assert [(p["step"], p["answer"]) for p in probes] == [(0, result.answer), (3, "again")]  # last write wins
    assert probes[0]["kind"] == "probe" and probes[0]["seconds"] == 0.25


# --------------------------------------------------------------------------------------------- tiny model
def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("kind") == "train"}


def test_probes_do_not_change_training_and_are_logged(cfg, tmp_path, monkeypatch):
    from core.training import train

    plain = train(cfg, workspace=tmp_path / "ws")
    probes: list[ProbeResult] = []
    events: list[StatusEvent] = []
    import core.probes as probes_module

    paused: list[float] = []
    real_factory = probes_module.make_probe_callback

    def recording_factory(*args, on_pause=None, **kwargs):
        def record(seconds: float) -> None:
            paused.append(seconds)
            on_pause(seconds)
        return real_factory(*args, on_pause=record, **kwargs)

    monkeypatch.setattr(probes_module, "make_probe_callback", recording_factory)
    probed = train(cfg, workspace=tmp_path / "ws", probes=PROMPTS,
                   sinks=[CallbackSink(on_status=events.append, on_probe=probes.append)])
    assert plain.state == probed.state == "finished"
    expected, got = _losses(plain.run_dir), _losses(probed.run_dir)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step

    # Step 0 (the base model), then each checkpoint save (steps 3 and 6), each prompt once.
    records = read_probes(probed.run_dir)
    assert [(r["step"], r["prompt_index"]) for r in records] == [(s, i) for s in (0, 3, 6) for i in (0, 1)]
    assert [r["prompt"] for r in records[:2]] == PROMPTS
    assert all(isinstance(r["answer"], str) and 0 < r["n_tokens"] <= 24 and r["seconds"] > 0 for r in records)
    assert records[-1]["total_seconds"] == pytest.approx(sum(r["seconds"] for r in records))
    assert [(p.step, p.prompt_index) for p in probes] == [(r["step"], r["prompt_index"]) for r in records]
    cost = [e.message for e in events if e.message.startswith("probes at step")]
    assert len(cost) == 3 and "2 answers in" in cost[0] and "3 rounds" in cost[-1]
    settings = load_probe_settings(probed.run_dir)
    assert settings == {"prompts": PROMPTS, "every": None, "max_new_tokens": 24}
    assert not (plain.run_dir / "probes.json").exists() and read_probes(plain.run_dir) == []
    # Probe time is kept out of the speed figures: each round's cost is handed to the step timer as a pause
    # (the mechanic; the overhead figure itself is measured in bench/, not asserted on a shared machine).
    assert len(paused) == 3 and sum(paused) >= records[-1]["total_seconds"]


def test_stop_during_probing_then_resume_keeps_probing(cfg, tmp_path):
    from core.cancel import StopToken
    from core.training import resume, train

    stop = StopToken()
    seen: list[ProbeResult] = []

    def on_probe(result: ProbeResult) -> None:
        seen.append(result)
        if result.step == 3:
            stop.request("test stop")  # while the step-3 round is still running

    cfg.training.max_steps = 8
    stopped = train(cfg, workspace=tmp_path / "ws", stop=stop, probes=PROMPTS, probe_every=3,
                    probe_max_new_tokens=8, sinks=[CallbackSink(on_probe=on_probe)])
    assert stopped.state == "stopped" and stopped.global_step == 4
    assert [(p.step, p.prompt_index) for p in seen] == [(0, 0), (0, 1), (3, 0)]  # the round was cut short
    assert [step for step, _ in list_checkpoints(stopped.run_dir)] == [3, 4]
    assert read_status(stopped.run_dir)["state"] == "stopped"

    resumed = resume(stopped.run_dir)  # probes.json brings back the prompts, interval and length
    assert resumed.state == "finished" and resumed.global_step == 8
    steps = sorted({r["step"] for r in read_probes(stopped.run_dir)})
    assert steps == [0, 3, 6]  # no second step-0 round on resume; every 3 steps otherwise
    assert all(r["n_tokens"] <= 8 for r in read_probes(stopped.run_dir))


def test_probe_settings_are_validated(cfg, tmp_path):
    from core.training import train

    with pytest.raises(ConfigError, match="probe_every"):
        train(cfg, workspace=tmp_path / "ws", probes=PROMPTS, probe_every=0)
    with pytest.raises(ConfigError, match="probe_max_new_tokens"):
        train(cfg, workspace=tmp_path / "ws", probes=PROMPTS, probe_max_new_tokens=0)
    assert not (tmp_path / "ws").exists()  # refused before a run folder was made
