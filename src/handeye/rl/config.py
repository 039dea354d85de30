"""The RL stage's configuration, apart from the trainer so that reading it (the reward-curve figures, DVC's
matrix) does not import torch and rsl-rl: every PPO and environment knob, documented once."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class EnvConfig:
    num_envs: int = 16  # environments stepped in lockstep (per rank under torchrun)
    episode_length_s: float = 10.0  # time limit (Isaac Lab: 10 s); reaching it is a time-out, not a failure
    control_dt: float = 1 / 60  # s per policy step (Isaac Lab: sim dt 1/120, decimation 2)
    image_size: int = 64  # square camera images (Isaac Lab renders 120x120)
    workers: int = 2  # MuJoCo: processes that step and render the envs, per rank (0 = in this process)
    reset_position_noise: float = 0.01  # m, uniform noise on the cube's spawn position (Isaac Lab)
    reset_dof_pos_noise: float = 0.2  # fraction of the joint range added to the hand's start pose (Isaac Lab)
    vel_obs_scale: float = 0.2  # joint/angular velocities are scaled by this in observations (Isaac Lab)
    # rad: each goal lies within this angle of the cube's start orientation (after a success: of the goal just
    # reached), and at least rewards.GOAL_MIN_ANGLE from it: an easier variant for learning studies (MuJoCo
    # backend); None: any orientation, Isaac Lab's task
    goal_max_angle: float | None = None
    # rad: the cube starts within this angle of its rest orientation on the palm (MuJoCo backend); None: any
    # orientation, Isaac Lab's task. With near goals, a start known to the policy makes the turn each goal
    # asks for readable from the goal (docs/performance.md: the setting nearest to learning on 2 cores)
    start_max_angle: float | None = None
    encoder_bf16: bool = True  # embed under bfloat16 autocast (tested to match float32 embeddings closely)
    embed_batch: int = 256  # images per encoder call


@dataclass(frozen=True)
class RLConfig:
    backend: str = "mujoco"  # mujoco (CPU, runs here) or isaaclab (GPU, docker/Dockerfile.isaaclab)
    encoder: str = "imagenet"  # encoder spec (handeye.models.encoders.load_encoder): registry name or checkpoint path
    seed: int = 0  # seeds torch, the env's generator and PPO (rank r of a launch: seed + r)
    encoders: list[str] = field(default_factory=lambda: ["random", "imagenet", "ego_frozen", "epic_frozen"])  # DVC matrix and figures
    # encoders whose weights are data at data/weights/<name> (the DINOv3 baseline): stage rl_baseline
    baselines: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])  # DVC matrix and figure bands
    out_dir: str = "out/rl"  # runs go to <out_dir>/<encoder>_s<seed>
    iterations: int = 8  # PPO iterations; one = a rollout of num_steps_per_env steps per env + an update
    num_steps_per_env: int = 16  # rollout length (Isaac Lab vision task: 64)
    save_interval: int = 4  # checkpoint every this many iterations (and at the end)
    init_at_random_ep_len: bool = True  # stagger episode ends from the first iteration (Isaac Lab's train.py)
    actor_hidden_dims: list[int] = field(default_factory=lambda: [1024, 512, 512, 256, 128])  # MLP widths
    critic_hidden_dims: list[int] = field(default_factory=lambda: [1024, 512, 512, 256, 128])
    # the critic reads the camera embeddings beside proprioception and the privileged state (Isaac Lab's); False:
    # not them, a value to learn from 107 inputs instead of 2 * D + 107 (docs/performance.md, what learning needs)
    critic_images: bool = True
    activation: str = "elu"
    obs_normalization: bool = True  # running mean/std normalisation of actor and critic inputs
    init_noise_std: float = 1.0  # initial std of the Gaussian policy
    learning_rate: float = 5.0e-4
    schedule: str = "adaptive"  # adaptive: lr follows the KL to desired_kl; fixed: constant
    desired_kl: float = 0.01
    num_learning_epochs: int = 5
    num_mini_batches: int = 4
    clip_param: float = 0.2
    entropy_coef: float = 0.005
    value_loss_coef: float = 1.0
    use_clipped_value_loss: bool = True
    gamma: float = 0.99
    lam: float = 0.95  # GAE lambda
    max_grad_norm: float = 1.0
    threads: int = 2  # torch threads per rank (bits depend on it; FIELD_NOTES)
    env: EnvConfig = field(default_factory=EnvConfig)

    @property
    def every_encoder(self) -> list[str]:
        """The figures' and the table's lines, in order: the strategies, then the baselines."""
        return [*self.encoders, *self.baselines]


def run_name(encoder: str, seed: int) -> str:
    """``imagenet`` -> ``imagenet_s0``; a path ``out/models/x/encoder.pt`` -> ``x_s0``."""
    path = Path(encoder)
    stem = path.parent.name if path.name == "encoder.pt" else path.stem
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', stem or encoder)}_s{seed}"
