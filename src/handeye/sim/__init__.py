"""MuJoCo scenes of the Shadow hand, shared by the demo data generator and the RL environment."""
