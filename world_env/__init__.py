"""nextframe world_env: the learned simulator as Gymnasium environments, and the real games."""
