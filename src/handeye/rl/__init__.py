"""Stage ``rl``: PPO (rsl-rl) on two-camera in-hand cube reorientation through a frozen encoder.

train (the stage: config -> env -> runner -> outputs), config (RLConfig, torch-free), runner (rsl-rl's
OnPolicyRunner extended for gloo/CPU and dvclive), figures (the reward curves), envs/ (one interface, the
MuJoCo and Isaac Lab backends). Imports point down this list: envs never import train.
"""
