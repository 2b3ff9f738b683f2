"""nextframe world_env: the learned simulator as Gymnasium environments, and the real games behind it.

Importing registers:
- ``nextframe/Crafter-v0``: the shipped Crafter world model (or ``checkpoint=...``);
- ``nextframe/WorldModel-v0``: any world-model checkpoint, ``checkpoint=`` required.

Both work with ``gymnasium.make`` (single env) and ``gymnasium.make_vec(..., num_envs=N)`` (batched on one device).
"""
from gymnasium.envs.registration import register, registry

from world_env.env import WorldModelEnv, WorldModelVecEnv

__all__ = ["WorldModelEnv", "WorldModelVecEnv"]

_ENTRY_POINTS = {
    "nextframe/Crafter-v0": ("world_env.env:WorldModelEnv", "world_env.env:WorldModelVecEnv"),
    "nextframe/WorldModel-v0": ("world_env.env:make_world_model_env", "world_env.env:make_world_model_vec_env"),
}
for _env_id, (_entry_point, _vector_entry_point) in _ENTRY_POINTS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, vector_entry_point=_vector_entry_point)
