"""Stable-Baselines3 adapter: the batched dream as an SB3 `VecEnv`, so `PPO("CnnPolicy", env)` trains in it.

SB3 expects same-step autoreset: when an env's episode ends, `step_wait` returns the next episode's first frame and
puts the ending frame in `info["terminal_observation"]`, with `info["TimeLimit.truncated"]` telling truncation
(bootstrap the value) from termination.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv

from world_env.env import WorldModelVecEnv


class SB3DreamVecEnv(VecEnv):
    """Wrap a `WorldModelVecEnv` (built here from the same arguments) as an SB3 `VecEnv`."""

    def __init__(self, checkpoint=None, num_envs: int = 1, **kwargs):
        kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP
        kwargs["output"] = "numpy"
        self.dream = WorldModelVecEnv(checkpoint, num_envs=num_envs, **kwargs)
        super().__init__(num_envs, self.dream.single_observation_space, self.dream.single_action_space)
        self._actions: np.ndarray | None = None
        # `get_images` always works, so rgb_array rendering does too; VecVideoRecorder reads `render_fps` here.
        self.render_mode = "rgb_array"
        self.metadata = {"render_modes": ["human", "rgb_array"], "render_fps": self.dream.metadata["render_fps"]}

    def reset(self) -> np.ndarray:
        """Reset every env with the seeds of `seed()` and the options of `set_options()` (both used once)."""
        seeds = [s for s in self._seeds] if any(s is not None for s in self._seeds) else None
        if seeds is not None:
            seeds = [int(s) if s is not None else int(np.random.randint(2**31)) for s in seeds]
        obs, _ = self.dream.reset(seed=seeds, options=self._dream_options())
        self._reset_seeds()
        self._reset_options()
        return obs

    def _dream_options(self) -> dict | None:
        """SB3 keeps one options dict per env; the dream takes one batch: stack per-env prompt clips."""
        if not any(self._options):
            return None
        keys = {key for options in self._options for key in options}
        if keys != {"prompt"} or not all(self._options):
            raise ValueError(
                f"SB3DreamVecEnv.set_options takes {{'prompt': {{'frames': ..., 'actions': ...}}}} for every env; "
                f"got keys {sorted(keys)}"
            )
        prompts = [options["prompt"] for options in self._options]
        batch = {"frames": np.stack([np.asarray(prompt["frames"]) for prompt in prompts])}  # (N, P, H, W, 3)
        with_actions = ["actions" in prompt for prompt in prompts]
        if any(with_actions) and not all(with_actions):
            raise ValueError("give prompt 'actions' for every env or for none")
        if all(with_actions):
            batch["actions"] = np.stack([np.asarray(prompt["actions"]) for prompt in prompts])  # (N, P, ...)
        return {"prompt": batch}

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if self.dream.single_action_space.shape == () and actions.ndim == 2 and actions.shape[1] == 1:
            actions = actions[:, 0]  # some SB3 policies return (N, 1) for Discrete spaces
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, infos = self.dream.step(self._actions)
        dones = terminated | truncated
        out_infos: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            info: dict[str, Any] = {"speculation_accepted": bool(infos["speculation_accepted"][i])}
            if dones[i]:
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            out_infos.append(info)
        return obs, rewards.astype(np.float32), dones, out_infos

    def close(self) -> None:
        self.dream.close()

    def get_images(self) -> Sequence[np.ndarray]:
        return list(self.dream.observations())

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.dream, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.dream, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self.dream, method_name)(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]
