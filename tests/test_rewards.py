"""The shared reward against hand-computed cases (Isaac Lab's constants)."""

import math

import pytest
import torch

from handeye.rl.envs import rewards

IDENTITY = torch.tensor([[1.0, 0.0, 0.0, 0.0]])


def about_z(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)]])


def reward(pos=(0.0, 0.0, 0.0), quat=IDENTITY, goal=IDENTITY, actions=None):
    actions = torch.zeros(1, 20) if actions is None else actions
    return rewards.compute_reward(torch.tensor([pos]), quat, torch.zeros(1, 3), goal, actions)


def test_goal_reached_in_place_with_no_action():
    r = reward()
    # 1 / (0 + 0.1) + 250 bonus, nothing else
    assert r.terms["track_orientation_inv_l2"].item() == pytest.approx(10.0)
    assert r.terms["success_bonus"].item() == 250.0
    assert r.total.item() == pytest.approx(260.0)
    assert r.success.item() and not r.fell.item()


def test_half_turn_away_and_displaced():
    r = reward(pos=(0.03, 0.04, 0.0), quat=about_z(math.pi))
    # rot_dist = pi; 1/(pi + 0.1); position 0.05 m * -10 = -0.5; no bonus
    assert r.rot_dist.item() == pytest.approx(math.pi, abs=1e-5)
    assert r.terms["track_orientation_inv_l2"].item() == pytest.approx(1 / (math.pi + 0.1), rel=1e-5)
    assert r.terms["track_pos_l2"].item() == pytest.approx(-0.5, rel=1e-6)
    assert r.terms["success_bonus"].item() == 0.0
    assert r.total.item() == pytest.approx(1 / (math.pi + 0.1) - 0.5, rel=1e-5)


def test_success_tolerance_is_inclusive_at_0_1_rad():
    assert reward(quat=about_z(0.099)).success.item()
    assert not reward(quat=about_z(0.102)).success.item()


def test_rotation_distance_ignores_quaternion_sign_and_uses_the_goal_frame():
    q = about_z(0.7)
    assert rewards.rotation_distance(q, IDENTITY).item() == pytest.approx(0.7, abs=1e-6)
    assert rewards.rotation_distance(-q, IDENTITY).item() == pytest.approx(0.7, abs=1e-6)
    assert rewards.rotation_distance(q, q).item() == pytest.approx(0.0, abs=1e-3)


def test_action_penalty():
    r = reward(quat=about_z(1.0), actions=torch.full((1, 20), 0.5))
    assert r.terms["action_l2"].item() == pytest.approx(-0.0002 * 20 * 0.25)


def test_fall_threshold_0_24_m():
    assert not reward(pos=(0.0, 0.0, -0.239)).fell.item()
    assert reward(pos=(0.0, 0.0, -0.24)).fell.item()


def test_terms_sum_to_total_on_a_batch():
    g = torch.Generator().manual_seed(0)
    n = 64
    r = rewards.compute_reward(torch.rand(n, 3, generator=g) * 0.1, rewards.random_quat(n, g), torch.zeros(n, 3),
                               rewards.random_quat(n, g), torch.rand(n, 20, generator=g) * 2 - 1)
    assert set(r.terms) == set(rewards.TERMS)
    torch.testing.assert_close(sum(r.terms.values()), r.total)


def test_random_quat_is_unit_and_seeded():
    a = rewards.random_quat(100, torch.Generator().manual_seed(1))
    b = rewards.random_quat(100, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(100))
    assert torch.equal(a, b)
    assert rewards.rotation_distance(a[:50], a[50:]).std() > 0.3  # spread over orientations


def test_nearby_goals_lie_within_their_angle():
    g = torch.Generator().manual_seed(0)
    q = rewards.random_quat(256, g)
    near = rewards.nearby_quat(q, 0.5, g)
    angle = rewards.rotation_distance(near, q)
    assert float(angle.max()) <= 0.5 + 1e-5 and float(angle.mean()) > 0.1
    assert torch.allclose(torch.linalg.vector_norm(near, dim=-1), torch.ones(256), atol=1e-5)
    away = rewards.rotation_distance(rewards.nearby_quat(q, 0.5, g, min_angle=rewards.GOAL_MIN_ANGLE), q)
    assert float(away.min()) >= rewards.GOAL_MIN_ANGLE - 1e-5 > rewards.SUCCESS_TOLERANCE  # never reached when drawn
