"""TorchRL adapter: the batched dream as a TorchRL env with `batch_size=[num_envs]`, for collectors and replay buffers.

Built on TorchRL's own `GymWrapper`, which drives a Gymnasium vector env in `AutoresetMode.DISABLED` the TorchRL way:
`env.reset()` resets every env; `step_and_maybe_reset` (collectors, `rollout`) resets only the envs whose `done` is
set, by passing TorchRL's `"_reset"` mask on as `reset(options={"reset_mask": ...})`. The ending frame stays in
`("next", pixels_key)`, so nothing is lost at episode ends.

Keys: `pixels_key` `(N, H, W, 3)` uint8, `action` (`Categorical` `(N,)` int64 for a Discrete space by default),
`("next", "reward")` `(N, 1)` float32, `("next", "done" | "terminated" | "truncated")` `(N, 1)` bool.

Needs the optional extra: `pip install "nextframe[torchrl]"` (TorchRL 0.14 pins tensordict < 0.15).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gymnasium.vector import AutoresetMode

from world_env.env import WorldModelVecEnv

if TYPE_CHECKING:
    from generator.pretrained import WorldModel
    from torchrl.envs import EnvBase


def make_torchrl_env(
    checkpoint: str | Path | WorldModel | None = None,
    num_envs: int = 1,
    *,
    pixels_key: str = "pixels",
    categorical_action_encoding: bool = True,
    **kwargs,
) -> EnvBase:
    """A TorchRL env over a `WorldModelVecEnv` built here from `checkpoint`, `num_envs` and `kwargs`.

    `kwargs` are `WorldModelVecEnv`'s (`device`, `sampler_steps`, `speculation_depth`, `max_episode_steps`, ...);
    `autoreset_mode` and `output` are set here. Frames stay on the model's device (the env's `device`).
    `pixels_key`: the observation's key ("pixels", TorchRL's name for image observations, which its image
    transforms read by default). `categorical_action_encoding`: integer actions for Discrete spaces (False:
    one-hot).
    """
    try:
        from torchrl.envs import GymWrapper, RenameTransform, TransformedEnv
    except ImportError as error:
        raise ImportError('the TorchRL adapter needs torchrl: pip install "nextframe[torchrl]"') from error

    kwargs["autoreset_mode"] = AutoresetMode.DISABLED
    kwargs["output"] = "torch"
    dream = WorldModelVecEnv(checkpoint, num_envs=num_envs, **kwargs)
    env = GymWrapper(
        dream,
        categorical_action_encoding=categorical_action_encoding,
        device=dream.device,
        convert_actions_to_numpy=False,
    )
    if pixels_key != "observation":
        env = TransformedEnv(env, RenameTransform(["observation"], [pixels_key]))
    return env
