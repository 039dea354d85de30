"""The environment interface on the MuJoCo backend (tiny, with a fake encoder) and the Isaac Lab pure parts."""

import math
import os

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from handeye.errors import HandEyeError
from handeye.models.vit import Preprocess
from handeye.rl.envs import base, rewards
from handeye.rl.envs.base import EnvConfig

EMBED_DIM = 6


class FakeEncoder:
    """A fixed random projection of 4x4-pooled pixels: cheap, deterministic, sensitive to the image."""

    name = "fake"
    preprocess = Preprocess(input_size=32)
    embed_dim = EMBED_DIM

    def __init__(self):
        self.weight = torch.randn(3 * 4 * 4, EMBED_DIM, generator=torch.Generator().manual_seed(0))
        self.calls = 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        self.calls += 1
        pooled = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)
        return pooled @ self.weight


def make_env(**kw):
    from handeye.rl.envs.mujoco_env import MujocoCubeEnv

    cfg = EnvConfig(**{"num_envs": 2, "workers": 0, "image_size": 32, "episode_length_s": 1.0, **kw})
    return MujocoCubeEnv(cfg, FakeEncoder(), seed=0)


@pytest.fixture(scope="module")
def env():
    e = make_env()
    yield e
    e.close()


def test_observation_groups_and_shapes(env):
    obs = env.get_observations()
    assert set(obs.keys()) == {"policy", "proprio", "privileged"}
    assert obs["policy"].shape == (2, base.NUM_CAMERAS * EMBED_DIM + base.PROPRIO_DIM)
    torch.testing.assert_close(obs["proprio"], obs["policy"][:, base.NUM_CAMERAS * EMBED_DIM:], rtol=0, atol=0)
    assert obs["privileged"].shape == (2, base.PRIVILEGED_DIM)
    assert env.num_actions == 20 and env.max_episode_length == 60
    assert torch.isfinite(obs["policy"]).all()
    # the two cameras see different things
    emb = obs["policy"][:, :2 * EMBED_DIM].view(2, 2, EMBED_DIM)
    assert not torch.allclose(emb[:, 0], emb[:, 1])


def test_step_contract(env):
    _obs, rew, dones, extras = env.step(torch.zeros(2, 20))
    assert rew.shape == (2,) and rew.dtype == torch.float32
    assert dones.shape == (2,) and dones.dtype == torch.long
    assert extras["time_outs"].shape == (2,) and extras["time_outs"].dtype == torch.bool
    assert {f"Reward/{t}" for t in rewards.TERMS} <= set(extras["log"])
    assert (env.episode_length_buf == 1).all()
    # the step's terms stay readable (benchmarks/bench_rl_learning.py trains on some of them) and sum to it
    assert torch.allclose(sum(env.reward.terms[t] for t in rewards.TERMS).float(), rew)


def test_goal_is_resampled_on_success_without_ending_the_episode(env):
    env.step(torch.zeros(2, 20))
    # make env 0's goal the cube's current orientation: the next step (small motion) reaches it
    cube = env.get_observations()["privileged"][:, 3:7]
    env.goal_quat[0] = cube[0]
    old_goal = env.goal_quat.clone()
    _, rew, dones, extras = env.step(torch.zeros(2, 20))
    assert extras["log"]["Reward/success_bonus"].item() == pytest.approx(rewards.REACH_GOAL_BONUS / 2)
    assert rew[0] > rewards.REACH_GOAL_BONUS and dones[0] == 0
    assert not torch.equal(env.goal_quat[0], old_goal[0])
    torch.testing.assert_close(env.goal_quat[1], old_goal[1])


def test_time_out_resets_and_is_flagged():
    e = make_env(episode_length_s=3 / 60)
    try:
        for _ in range(2):
            _, _, dones, extras = e.step(torch.zeros(2, 20))
            assert not dones.any()
        obs, _, dones, extras = e.step(torch.zeros(2, 20))
        assert dones.tolist() == [1, 1] and extras["time_outs"].all()
        assert (e.episode_length_buf == 0).all()
        assert "Episode_Reward/track_orientation_inv_l2" in extras["log"]
        assert extras["log"]["Episode/success_rate"].shape == (2,)
        # a new episode: the last-action part of the observation is cleared
        torch.testing.assert_close(obs["policy"][:, -20:], torch.zeros(2, 20))
    finally:
        e.close()


def test_near_goals_are_not_reached_when_drawn():
    """A goal drawn within the success tolerance would pay the bonus on reset: PPO then learns to drop the cube."""
    e = make_env(num_envs=8, goal_max_angle=0.5, episode_length_s=2 / 60)
    try:
        resets = 0
        for _ in range(8):
            obs, _, dones, _ = e.step(torch.zeros(8, 20))
            reset = dones.bool()
            resets += int(reset.sum())
            quat = obs["privileged"][reset, 3:7]  # base.privileged_obs: the cube's orientation as reset
            dist = rewards.rotation_distance(quat, e.goal_quat[reset])
            assert bool((dist > rewards.SUCCESS_TOLERANCE).all()), dist
        assert resets >= 16
    finally:
        e.close()
    with pytest.raises(HandEyeError, match=r"goal_max_angle 0\.1 must exceed"):
        make_env(goal_max_angle=0.1)


@pytest.mark.parametrize("start_max_angle", [0.0, 0.3])
def test_cube_starts_near_its_rest_orientation_when_asked(start_max_angle):
    e = make_env(num_envs=8, start_max_angle=start_max_angle)
    try:
        quat = e.get_observations()["privileged"][:, 3:7]  # base.privileged_obs: the cube's orientation
        dist = rewards.rotation_distance(quat, e.rest_quat.expand(8, 4))
        assert bool((dist <= start_max_angle + 1e-3).all()), dist
        assert (dist.max() > 0.05) == (start_max_angle > 0)  # drawn within the angle, not all at rest
    finally:
        e.close()


def test_fallen_cube_terminates_without_time_out(env):
    import numpy as np

    info_pos = env.spawn_pos.double().numpy()[None] - [[0.0, 0.0, 0.5]]
    env.sim.reset_render(np.array([1]), env.default_joint_pos.double().numpy()[None], info_pos,
                         np.array([[1.0, 0.0, 0.0, 0.0]]))
    _, _, dones, extras = env.step(torch.zeros(2, 20))
    assert dones[1] == 1 and not extras["time_outs"][1]
    assert env.episode_length_buf[1] == 0  # reset


@pytest.mark.slow
def test_worker_processes_give_the_same_bits_as_one_process():
    runs = []
    for workers in (0, 2):
        e = make_env(workers=workers, num_envs=3)
        try:
            out = [e.get_observations()["policy"].clone()]
            g = torch.Generator().manual_seed(3)
            for _ in range(3):
                obs, rew, _, _ = e.step(torch.rand(3, 20, generator=g) * 2 - 1)
                out += [obs["policy"].clone(), rew.clone()]
            runs.append(out)
        finally:
            e.close()
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_bf16_embeddings_match_float32():
    from handeye.models.encoders import load_encoder
    from handeye.rl.envs.mujoco_env import embed_images

    enc = load_encoder("random:vit_demo_patch8_64")
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = EnvConfig().embed_batch
    bf16 = embed_images(enc, images, bf16=True, batch=batch)
    fp32 = embed_images(enc, images, bf16=False, batch=batch)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99


# ------------------------------------------------------------------------------- Isaac Lab (pure parts)


def test_isaaclab_is_refused_here_with_the_docker_hint():
    from handeye.errors import HandEyeError
    from handeye.rl.envs.isaaclab import require_isaaclab

    with pytest.raises(HandEyeError, match=r"Dockerfile.isaaclab"):
        require_isaaclab()


def test_isaaclab_cameras_look_at_the_cube():
    from handeye.rl.envs.isaaclab import views

    for eye, target in views.CAMERAS:
        q = torch.tensor([views.look_at_quat(eye, target)], dtype=torch.float32)
        minus_z = torch.tensor([[0.0, 0.0, 0.0, -1.0]])
        look = rewards.quat_mul(rewards.quat_mul(q, minus_z), rewards.quat_conjugate(q))[0, 1:]
        want = torch.tensor(target) - torch.tensor(eye)
        torch.testing.assert_close(look, want / want.norm(), atol=1e-5, rtol=0)
        assert q.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_isaaclab_split_views_keeps_env_major_order():
    from handeye.rl.envs.isaaclab.views import split_views

    rgb = torch.zeros(4, 8, 8, 4)
    for i in range(4):
        rgb[i, ..., 0] = i / 4  # tile i = env i // 2, camera i % 2
    out = split_views(rgb, num_envs=2)
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.uint8
    assert [int(t[0, 0, 0]) for t in out] == [round(i / 4 * 255) for i in range(4)]
    with pytest.raises(ValueError, match="expected 6 tiles, got 4"):
        split_views(rgb, num_envs=3)


def test_observation_layout_is_shared_by_both_backends():
    n, d = 3, 5
    policy = base.policy_obs(torch.randn(2 * n, d), torch.zeros(n, 24), -torch.ones(24), torch.ones(24),
                             torch.zeros(n, 24), torch.zeros(n, 4), torch.zeros(n, 5, 3), torch.zeros(n, 3),
                             torch.zeros(n, 20), 0.2)
    assert policy.shape == (n, 2 * d + base.PROPRIO_DIM)
    priv = base.privileged_obs(torch.zeros(n, 3), rewards.random_quat(n), torch.zeros(n, 3), torch.zeros(n, 3),
                               rewards.random_quat(n), torch.zeros(n, 3), 0.2)
    assert priv.shape == (n, base.PRIVILEGED_DIM)
    assert math.isclose(float(priv[:, 3:7].norm(dim=-1).mean()), 1.0, rel_tol=1e-5)
