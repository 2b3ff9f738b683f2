"""nextframe world_env: the learned simulator as Gymnasium environments, and the real games behind it.

Importing registers:
- ``nextframe/Crafter-v0``: the shipped Crafter world model (or ``checkpoint=...``);
- ``nextframe/WorldModel-v0``: any world-model checkpoint, ``checkpoint=`` required.

Both work with ``gymnasium.make`` (single env) and ``gymnasium.make_vec(..., num_envs=N)`` (batched on one device).
"""
from gymnasium.envs.registration import register, registry

from world_env.env import WorldModelEnv, WorldModelVecEnv

__all__ = ["WorldModelEnv", "WorldModelVecEnv"]

for _env_id in ("nextframe/Crafter-v0", "nextframe/WorldModel-v0"):
    if _env_id not in registry:
        register(
            id=_env_id,
            entry_point="world_env.env:WorldModelEnv",
            vector_entry_point="world_env.env:WorldModelVecEnv",
        )
