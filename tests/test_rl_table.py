"""The RL table's seed aggregation against hand-computed values, and the curves' no-carried-forward rule."""

import json
import math

import pandas as pd
import pytest

from handeye.rl.figures import read_run
from handeye.rl.table import final_value, render, seed_band, summarise, write_rl_table


def test_seed_band_is_the_t_interval_of_the_mean():
    mean, half = seed_band([1.0, 2.0, 3.0])
    # sd 1, n 3, t_{0.975, 2} = 4.302653 -> 4.302653 / sqrt(3)
    assert mean == 2.0 and half == pytest.approx(2.484138, abs=1e-6)
    mean, half = seed_band([10.0, 14.0])  # sd 2.828427, t_{0.975, 1} = 12.706205 -> 12.706205 * 2.828427 / sqrt 2
    assert mean == 12.0 and half == pytest.approx(25.41241, abs=1e-4)


def test_one_seed_has_no_band_and_missing_runs_are_left_out():
    assert seed_band([5.0])[0] == 5.0 and math.isnan(seed_band([5.0])[1])
    assert seed_band([math.nan, 4.0, 6.0])[0] == 5.0
    assert all(math.isnan(v) for v in seed_band([]))


def test_final_value_is_the_mean_of_the_last_tenth_of_the_logged_iterations():
    assert final_value(pd.Series([math.nan, 1.0, 2.0, math.nan, 3.0])) == 3.0  # 3 logged: the last one
    eleven = pd.Series([float(i) for i in range(11)] + [math.nan])
    assert final_value(eleven) == 9.5  # 11 logged: ceil(1.1) = the last two
    assert math.isnan(final_value(pd.Series([math.nan, math.nan])))


def frame(encoder, seed, rewards):
    return pd.DataFrame({"encoder": encoder, "seed": seed, "iteration": range(len(rewards)),
                         "Train/mean_reward": rewards, "Episode_Reward/track_orientation_inv_l2": rewards,
                         "Episode/success_rate": [0.5] * len(rewards)})


def test_summarise_and_render(tmp_path):
    data = pd.concat([frame("random", 0, [0.0, 1.0]), frame("random", 1, [0.0, 3.0]),
                      frame("imagenet", 0, [0.0, 4.0]), frame("imagenet", 1, [0.0, 4.0])])
    table = summarise(data)
    assert list(table) == ["random", "imagenet"]  # the order of the runs, not sorted
    mean, half = table["random"]["Train/mean_reward"]
    assert mean == 2.0 and half == pytest.approx(12.706205, abs=1e-4)  # sd sqrt 2, n 2
    assert table["imagenet"]["Episode/success_rate"] == (0.5, 0.0)
    md = render(table, seeds=2, iterations=2, tex=False)
    assert "| `random` | 2.00 ± 12.71 |" in md and "mean over 2 seeds ± the 95% confidence" in md
    md_path, tex_path = write_rl_table(data, tmp_path)
    tex = tex_path.read_text()
    assert md_path.read_text() == md and r"2.00 $\pm$ 12.71" in tex and r"95\%" in tex


def write_run(run, iterations, logged):
    """A finished run folder whose metrics are logged at the iterations ``logged`` names."""
    (run / "live/plots/metrics/Train").mkdir(parents=True)
    (run / "live/plots/metrics/Episode").mkdir(parents=True)
    run.joinpath("timings.json").write_text(json.dumps(
        {"iterations": [{"iteration": i, "wall_s": 1.0 + i} for i in range(iterations)]}))
    for metric, its in logged.items():
        rows = "".join(f"{i}\t{10.0 + i}\n" for i in its)
        run.joinpath(f"live/plots/metrics/{metric}.tsv").write_text(f"step\t{metric.split('/')[-1]}\n{rows}")


def test_an_iteration_in_which_no_episode_ended_gets_no_mean_reward_point(tmp_path):
    # rsl-rl logs Train/mean_reward every iteration once an episode ended, repeating the last 100 episodes' mean
    write_run(tmp_path, 4, {"Train/mean_reward": [1, 2, 3], "Episode/success_rate": [1, 3]})
    got = read_run(tmp_path)
    values = got["Train/mean_reward"].tolist()
    assert math.isnan(values[0]) and values[1] == 11.0 and math.isnan(values[2]) and values[3] == 13.0
