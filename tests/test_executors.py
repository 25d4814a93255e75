"""Where shards run (core/executors.py), without Ray: the choice is checked before a job
folder is made, and a job's per-shard worker writes what its rank loop writes."""

from __future__ import annotations

import sys

import pytest

from vlmtool.errors import UsageError


def test_executor_ray_without_ray_is_one_usage_error_naming_the_extra(monkeypatch, tmp_path, faulty_world):
    from vlmtool.inspect_shards import InspectOptions, run_inspect

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match=r"pip install 'vlmtool\[ray\]'"):
        run_inspect([str(faulty_world)], str(tmp_path / "o"), InspectOptions(executor="ray", progress=False))
    assert not (tmp_path / "o").exists()
    with pytest.raises(UsageError, match="choose one of local, ray"):
        run_inspect([str(faulty_world)], str(tmp_path / "o"), InspectOptions(executor="dask", progress=False))


def test_cli_says_so_in_one_line(monkeypatch, capsys, tmp_path, faulty_world):
    from vlmtool.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr(sys, "argv", ["vlmtool", "inspect", str(faulty_world), "--out", str(tmp_path / "o"), "--executor", "ray"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vlmtool[ray]" in err


def test_ray_is_refused_inside_a_torchrun_launch(monkeypatch):
    pytest.importorskip("ray")
    from vlmtool.core.executors import ExecutorOptions, uses_ray

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="one driver process"):
        uses_ray(ExecutorOptions(executor="ray"))


def test_the_per_shard_worker_writes_what_the_rank_loop_writes(faulty_world, tmp_path):
    """InspectWorker (what a Ray actor runs) shard by shard, in this process: the same records."""
    import orjson

    from vlmtool.core.executors import run_here
    from vlmtool.core.shards import JobDir, expand_inputs, shard_refs
    from vlmtool.inspect_shards import InspectOptions, InspectWorker, run_inspect

    opts = InspectOptions(workers=0, progress=False)
    run_inspect([str(faulty_world)], str(tmp_path / "a"), opts)
    refs = shard_refs(expand_inputs([str(faulty_world)]))
    stats, _ = run_here(InspectWorker(str(tmp_path / "b"), opts), [(r, None) for r in refs])
    assert stats.shards_done == 5 and stats.samples == 60
    strip = lambda rec: {k: v for k, v in rec.items() if k != "seconds"}  # noqa: E731
    a, b = JobDir(tmp_path / "a", "inspect", refs).records(), JobDir(tmp_path / "b", "inspect", refs).records()
    assert orjson.dumps({k: strip(v) for k, v in a.items()}) == orjson.dumps({k: strip(v) for k, v in b.items()})
