"""core.model_use: a model load waits for the forward passes in flight in other threads and they wait for it;
runs never wait for each other; both sides are re-entrant in one thread."""

from __future__ import annotations

import threading

from core import model_use


def test_runs_share_and_a_load_excludes_them():
    log: list[str] = []
    inside_run = threading.Event()
    release_run = threading.Event()
    second_run_in = threading.Event()

    def run():
        with model_use.running():
            log.append("run in")
            inside_run.set()
            release_run.wait(30)
            log.append("run out")

    def another_run():
        inside_run.wait(30)
        with model_use.running():  # runs do not wait for each other
            second_run_in.set()

    def load():
        inside_run.wait(30)
        second_run_in.wait(30)
        with model_use.loading():
            log.append("load")

    threads = [threading.Thread(target=f) for f in (run, another_run, load)]
    for thread in threads:
        thread.start()
    assert second_run_in.wait(30)
    loader_started = threads[2]
    loader_started.join(0.2)
    assert "load" not in log  # the load waits while a run is in flight
    release_run.set()
    for thread in threads:
        thread.join(30)
    assert log == ["run in", "run out", "load"]


def test_reentrant_in_one_thread_and_a_runner_may_load():
    with model_use.running():
        with model_use.running():
            with model_use.loading():
                with model_use.loading():
                    with model_use.running():
                        pass
    done = threading.Event()

    def other():
        with model_use.loading():
            done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(30)
    assert done.is_set()  # nothing was left held
