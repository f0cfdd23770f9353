"""Experiment tracking for real: 3 tiny training steps logged to TensorBoard and to MLflow, read back with
each tool's own reader (TensorBoard's EventAccumulator, MLflow's client on a local SQLite store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError, RunConfig
from core.runs import read_metrics
from core.tracking import TRACKING_FILE, check_installed, mlflow_tracking_uri, read_tracking, reporting_targets


@pytest.fixture()
def cfg(tiny_model_dir, tmp_path, isolated_home) -> RunConfig:
    data = tmp_path / "qa.jsonl"
    with open(data, "w", encoding="utf-8") as handle:
        for i in range(24):
            handle.write(json.dumps({"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."}) + "\n")
    cfg = RunConfig(name="tracked")
    cfg.model.name_or_path = str(tiny_model_dir)
    cfg.data.source = str(data)
    cfg.data.test_fraction = 0.0
    cfg.method.method = "lora"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.logging_steps = 3, 4, 64, 1
    t.save_steps = 3
    t.learning_rate, t.warmup_ratio = 1e-3, 0.0
    t.device = "cpu"
    return cfg


def _logged_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r.get("kind") == "train" and "loss" in r}


def test_report_to_values_and_mapping(cfg, tmp_path, monkeypatch):
    from core.hf_args import training_arguments

    assert reporting_targets("none") == []
    assert reporting_targets("tensorboard+mlflow") == ["tensorboard", "mlflow"]
    cfg.training.report_to = "tensorboard+mlflow"
    args = training_arguments(cfg, tmp_path / "out", "cpu", eval_available=False)
    assert args.report_to == ["tensorboard", "mlflow"]
    with pytest.raises(ConfigError, match="unknown tracking target"):
        check_installed("wandb")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_tracking_uri(tmp_path / "ws" / "run") == "sqlite:///" + (tmp_path / "ws" / "mlflow.db").resolve().as_posix()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert mlflow_tracking_uri(tmp_path / "ws" / "run") == "http://tracking.example:5000"


def test_tensorboard_and_default_mlflow_store_receive_the_training_loss(cfg, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the `tracking` extra is not installed (scripts/setup.sh installs it)")
    pytest.importorskip("mlflow", reason="the `tracking` extra is not installed (scripts/setup.sh installs it)")
    pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy (the `tracking` extra)")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from core.training import train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg.training.report_to = "tensorboard+mlflow"
    result = train(cfg, workspace=tmp_path / "ws")
    assert result.state == "finished"
    info = read_tracking(result.run_dir)
    logdir = Path(info["tensorboard"]["logdir"])
    assert logdir == result.run_dir.resolve() / "tensorboard"
    assert "tensorboard --logdir" in info["tensorboard"]["open"]
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    events = accumulator.Scalars("train/loss")
    logged = _logged_losses(result.run_dir)
    assert [event.step for event in events] == [1, 2, 3] == sorted(logged)
    for event in events:  # TensorBoard stores float32
        assert event.value == pytest.approx(logged[event.step], rel=1e-6)
    assert "train/learning_rate" in accumulator.Tags()["scalars"]
    import os

    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # set only while the Trainer was built

    # Without $MLFLOW_TRACKING_URI: the workspace's SQLite store, experiment "finetune-studio".
    ml = info["mlflow"]
    assert ml["tracking_uri"] == "sqlite:///" + (tmp_path / "ws" / "mlflow.db").resolve().as_posix()
    assert ml["experiment"] == "finetune-studio" and ml["open"] == f"mlflow ui --backend-store-uri {ml['tracking_uri']}"
    client = MlflowClient(ml["tracking_uri"])
    assert client.get_run(ml["run_id"]).info.status == "FINISHED"
    history = {m.step: m.value for m in client.get_metric_history(ml["run_id"], "loss")}
    assert history == pytest.approx(logged)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the user's environment is as it was
    assert not (tmp_path / "mlruns").exists()  # nothing lands in the current folder


def test_mlflow_receives_the_training_loss_and_resume_continues_the_run(cfg, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the `tracking` extra is not installed (scripts/setup.sh installs it)")
    pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs sqlalchemy (the `tracking` extra)")
    from mlflow.tracking import MlflowClient

    from core.training import resume, train

    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    uri = "sqlite:///" + store.as_posix()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "studio-test")
    cfg.training.report_to = "mlflow"
    cfg.training.max_steps = 6
    from transformers import TrainerCallback

    from core.cancel import StopToken

    stop = StopToken()

    class StopAfterTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                stop.request("test stop")  # checked at the next step boundary: stops at step 3

    result = train(cfg, workspace=tmp_path / "ws", stop=stop, extra_callbacks=[StopAfterTwo()])
    assert result.state == "stopped" and result.global_step == 3
    info = read_tracking(result.run_dir)["mlflow"]
    assert info["tracking_uri"] == uri and info["experiment"] == "studio-test"
    client = MlflowClient(uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "KILLED" and run.info.run_name == "tracked"
    history = {m.step: m.value for m in client.get_metric_history(info["run_id"], "loss")}
    assert history == pytest.approx(_logged_losses(result.run_dir))
    assert sorted(history) == [1, 2, 3]

    # Resuming continues the same MLflow run: one curve from step 1 to 6, and the run ends FINISHED.
    resumed = resume(result.run_dir)
    assert resumed.state == "finished" and resumed.global_step == 6
    assert read_tracking(result.run_dir)["mlflow"]["run_id"] == info["run_id"]
    history = {m.step: m.value for m in client.get_metric_history(info["run_id"], "loss")}
    assert sorted(history) == [1, 2, 3, 4, 5, 6]
    assert history == pytest.approx(_logged_losses(result.run_dir))
    assert client.get_run(info["run_id"]).info.status == "FINISHED"
    assert (result.run_dir / TRACKING_FILE).is_file()


def test_cli_train_prints_where_the_tensorboard_logs_are(cfg, tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="the `tracking` extra is not installed (scripts/setup.sh installs it)")
    from core.cli import main

    config = tmp_path / "run.yaml"
    cfg.save(config)
    code = main(["train", "--config", str(config), "--max-steps", "1", "--output", str(tmp_path / "ws"),
                 "--set", "training.report_to=tensorboard"])
    assert code == 0
    out = capsys.readouterr().out
    logdir = (tmp_path / "ws" / "tracked" / "tensorboard").resolve()
    assert f"TensorBoard logs: {logdir}  (open: tensorboard --logdir {logdir})" in out
    assert any(logdir.glob("events.out.tfevents.*"))
    # The app's log file tells the story of the run (core.logs, set up by the CLI).
    from core.logs import log_file_path

    log = log_file_path().read_text(encoding="utf-8")
    for what in ("command `train` started", ": starting (lora on", "records read", "loaded model",
                 "TensorBoard logs:", "finished at step 1", "`train` ended with exit status 0"):
        assert what in log, what
