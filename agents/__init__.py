"""nextframe agents: PPO in the dream, evaluation, inverse dynamics."""
