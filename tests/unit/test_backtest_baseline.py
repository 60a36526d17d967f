"""``clinicflow backtest --baseline TREE``: the same simulated runs replayed by another
checkout's ``clinicflow replay`` and compared; ``--first-seed`` for seeds held out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import backtest
from tools.backtest import run_multi_day, tree_replay
from tools.replay import replay_events
from tools.simulate import simulate_days

ROOT = str(Path(__file__).resolve().parents[2])


def test_a_tree_s_replay_gives_what_its_replay_gives_in_process(tmp_path: Path) -> None:
    events = simulate_days("quiet_specialty", 2, 2, clinic_id="c1").events
    assert list(tree_replay(ROOT)(dict(e) for e in events)) == \
        list(replay_events(dict(e) for e in events))
    with pytest.raises(ValueError, match="not a clinicflow checkout"):
        tree_replay(str(tmp_path))
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("")
    (tmp_path / "tools" / "replay.py").write_text("raise SystemExit('broken')\n")
    with pytest.raises(RuntimeError, match="broken"):
        list(tree_replay(str(tmp_path))(dict(e) for e in events[:3]))


def test_the_baseline_is_scored_on_the_same_runs_and_written_beside_the_estimator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [result] = run_multi_day(["quiet_specialty"], [4], 2, baseline=tree_replay(ROOT))
    assert result.baseline is not None  # the same estimator: the same figures
    assert result.baseline[0].score == result.first_day.score
    assert result.baseline[1].score == result.remembered.score
    monkeypatch.setattr(backtest, "tree_replay", lambda _tree: replay_events)
    doc = tmp_path / "backtest.md"
    parser = backtest.argparse.ArgumentParser()
    backtest.add_cli(parser.add_subparsers())
    args = parser.parse_args(["backtest", "--scenarios", "quiet_specialty", "--seeds", "1",
                              "--first-seed", "6", "--days", "2", "--baseline", "/old",
                              "--baseline-name", "the old main", "--markdown", str(doc)])
    assert args.func(args) == 0
    text = doc.read_text()
    assert "--seeds 1 --first-seed 6 --days 2 --baseline /old" in text
    assert "seed 6" in text and "## Against the baseline: the old main" in text
    assert "| quiet_specialty | " in text.split("## Against the baseline")[1]
    assert "+0.0%" in text  # the same estimator on both sides
    args = parser.parse_args(["backtest", "--scenarios", "mixed", "--baseline", "/old"])
    assert args.func(args) == 2  # a baseline needs days after the first
    monkeypatch.undo()
    args = parser.parse_args(["backtest", "--scenarios", "mixed", "--days", "2",
                              "--baseline", str(tmp_path)])
    assert args.func(args) == 2  # not a checkout
