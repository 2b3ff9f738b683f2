"""MineRL actions in VPT's discretisation, and a live MineRL adapter.

Conventions follow openai/Video-Pre-Training:
- buttons: ``lib/actions.py`` ``Buttons.ALL`` (20 binary buttons; ``ESC``, ``swapHands`` and ``pickItem`` exist
  in MineRL 1.0 but are not in VPT's action space and are dropped by `MineRLActionCodec.encode`);
- camera: ``[delta pitch, delta yaw]`` degrees, clipped to +-10, mu-law (mu=10) then linear bins of 2 ->
  11 bins per axis, bin 5 is "no motion" (``agent.py`` ``ACTION_TRANSFORMER_KWARGS``, ``CameraQuantizer``);
- recordings: ``run_inverse_dynamics_model.py`` ``json_action_to_env_action`` and ``data_loader.py``
  (``camera = [dy, dx] * 360 / 2400``, mouse buttons 0/1/2 -> attack/use/pickItem).

``minerl`` itself is imported only inside `MineRLGame`; importing this module never needs it.
"""
from __future__ import annotations

from typing import Any, Iterable

import gymnasium
import numpy as np

from world_env.games.base import check_frame_size, resize_frame

VPT_BUTTONS = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop", "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)
# MineRL 1.0 buttons outside VPT's action space; accepted by `encode` and dropped.
MINERL_EXTRA_BUTTONS = ("ESC", "swapHands", "pickItem")

CAMERA_MAXVAL = 10.0  # degrees
CAMERA_BINSIZE = 2.0
CAMERA_MU = 10.0
CAMERA_BINS = 11
CAMERA_NULL_BIN = 5
# Mouse counts to degrees, as MineRL's Java sensitivity (run_inverse_dynamics_model.py CAMERA_SCALER).
CAMERA_SCALER = 360.0 / 2400.0

VPT_KEYBOARD_BUTTONS = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
VPT_MOUSE_BUTTONS = {0: "attack", 1: "use", 2: "pickItem"}


def camera_to_bins(camera: np.ndarray) -> np.ndarray:
    """Degrees ``(..., 2)`` -> int64 bins in ``[0, 11)`` (VPT ``CameraQuantizer.discretize``, mu-law)."""
    xy = np.clip(np.asarray(camera, dtype=np.float64), -CAMERA_MAXVAL, CAMERA_MAXVAL) / CAMERA_MAXVAL
    xy = np.sign(xy) * np.log1p(CAMERA_MU * np.abs(xy)) / np.log1p(CAMERA_MU) * CAMERA_MAXVAL
    return np.round((xy + CAMERA_MAXVAL) / CAMERA_BINSIZE).astype(np.int64)


def bins_to_camera(bins: np.ndarray) -> np.ndarray:
    """Int bins ``(..., 2)`` -> degrees, the bin centres (VPT ``CameraQuantizer.undiscretize``, mu-law)."""
    xy = (np.asarray(bins, dtype=np.float64) * CAMERA_BINSIZE - CAMERA_MAXVAL) / CAMERA_MAXVAL
    xy = np.sign(xy) * ((1.0 + CAMERA_MU) ** np.abs(xy) - 1.0) / CAMERA_MU * CAMERA_MAXVAL
    return xy


def noop_action() -> dict[str, Any]:
    """The MineRL 1.0 null action: every button 0 (VPT's and MineRL's extras) and camera ``[0, 0]``."""
    action: dict[str, Any] = {name: 0 for name in (*VPT_BUTTONS, *MINERL_EXTRA_BUTTONS)}
    action["camera"] = np.zeros(2, dtype=np.float64)
    return action


class MineRLActionCodec:
    """MineRL dict actions <-> one flat ``MultiDiscrete([2] * 20 + [11, 11])`` code.

    Code layout: ``code[:20]`` the buttons in `VPT_BUTTONS` order (0/1), ``code[20]`` the pitch bin and
    ``code[21]`` the yaw bin. ``decode(encode(a))`` gives back ``a``'s VPT buttons exactly and its camera to
    within one bin; ``encode(decode(code)) == code`` for every valid code.
    """

    buttons = VPT_BUTTONS

    def __init__(self) -> None:
        self.action_space = gymnasium.spaces.MultiDiscrete([2] * len(VPT_BUTTONS) + [CAMERA_BINS, CAMERA_BINS])
        self._button_set = frozenset(VPT_BUTTONS)
        self._known = self._button_set | frozenset(MINERL_EXTRA_BUTTONS) | {"camera"}

    @property
    def null_code(self) -> np.ndarray:
        """The code of the null action: no button, camera in the centre bins."""
        code = np.zeros(len(VPT_BUTTONS) + 2, dtype=np.int64)
        code[-2:] = CAMERA_NULL_BIN
        return code

    def encode(self, action: dict[str, Any]) -> np.ndarray:
        """MineRL dict action -> int64 code ``(22,)``. Missing buttons count as 0, a missing camera as no motion.

        Raises ``ValueError`` for unknown keys, non-binary buttons and a camera that is not 2 finite numbers.
        """
        unknown = set(action) - self._known
        if unknown:
            raise ValueError(f"unknown MineRL action keys {sorted(unknown)}; known: {sorted(self._known)}")
        code = np.empty(len(VPT_BUTTONS) + 2, dtype=np.int64)
        for index, name in enumerate(VPT_BUTTONS):
            value = np.asarray(action.get(name, 0))
            if value.shape != () or value not in (0, 1):
                raise ValueError(f"MineRL button {name!r} must be 0 or 1, got {action[name]!r}")
            code[index] = int(value)
        camera = np.asarray(action.get("camera", (0.0, 0.0)), dtype=np.float64)
        if camera.shape != (2,) or not np.all(np.isfinite(camera)):
            raise ValueError(f"MineRL camera must be 2 finite degrees [pitch, yaw], got {action.get('camera')!r}")
        code[-2:] = camera_to_bins(camera)
        return code

    def decode(self, code: np.ndarray) -> dict[str, Any]:
        """Int code ``(22,)`` -> MineRL dict: VPT buttons as 0/1 ints, ``camera`` as float degrees ``[pitch, yaw]``.

        Raises ``ValueError`` for a code outside `action_space`.
        """
        code = np.asarray(code)
        if code.shape != self.action_space.shape or not np.issubdtype(code.dtype, np.integer):
            raise ValueError(
                f"expected an integer code of shape {self.action_space.shape}, got {code.dtype} {code.shape}"
            )
        if np.any(code < 0) or np.any(code >= self.action_space.nvec):
            raise ValueError(f"code {code.tolist()} is outside {self.action_space}")
        action: dict[str, Any] = {name: int(code[index]) for index, name in enumerate(VPT_BUTTONS)}
        action["camera"] = bins_to_camera(code[-2:])
        return action

    @staticmethod
    def from_vpt_json(record: dict[str, Any]) -> dict[str, Any]:
        """One VPT ``.jsonl`` record -> MineRL dict action (VPT ``json_action_to_env_action``).

        Keys in ``keyboard.keys`` press their buttons, ``mouse.buttons`` 0/1/2 press attack/use/pickItem, and
        the camera is ``[dy, dx] * 360 / 2400`` degrees. Stateful fixes across records (hotbar scroll, stuck
        attack) live in `vpt_records_to_actions`. Unlike VPT's script the camera stays float (VPT's
        ``np.array([0, 0])`` template is int and truncates small motions).
        """
        action = noop_action()
        for key in record.get("keyboard", {}).get("keys", ()):
            if key in VPT_KEYBOARD_BUTTONS:
                action[VPT_KEYBOARD_BUTTONS[key]] = 1
        mouse = record.get("mouse", {})
        action["camera"] = np.array(
            [float(mouse.get("dy", 0.0)) * CAMERA_SCALER, float(mouse.get("dx", 0.0)) * CAMERA_SCALER]
        )
        for button in mouse.get("buttons", ()):
            if button in VPT_MOUSE_BUTTONS:
                action[VPT_MOUSE_BUTTONS[button]] = 1
        return action


def is_null_action(action: dict[str, Any]) -> bool:
    """True when no button is pressed and the camera does not move (VPT skips these for behaviour cloning)."""
    pressed = any(int(np.asarray(value)) for key, value in action.items() if key != "camera")
    return not pressed and not np.any(np.asarray(action.get("camera", (0.0, 0.0))))


def vpt_records_to_actions(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """VPT ``.jsonl`` records of one recording -> MineRL dict actions, one per record.

    Applies VPT ``data_loader.py``'s two fixes: attack held from the first record is ignored until it is
    pressed anew, and a change of the selected ``hotbar`` slot (e.g. by scroll wheel, which the recorder
    misses) presses ``hotbar.<slot+1>``. Null actions are kept: a world model needs every frame.
    """
    actions = []
    attack_is_stuck = False
    last_hotbar = 0
    for index, record in enumerate(records):
        mouse = dict(record.get("mouse", {}))
        new_buttons = list(mouse.get("newButtons", ()))
        if index == 0:
            attack_is_stuck = new_buttons == [0]
        elif attack_is_stuck and 0 in new_buttons:
            attack_is_stuck = False
        if attack_is_stuck:
            mouse["buttons"] = [button for button in mouse.get("buttons", ()) if button != 0]
        action = MineRLActionCodec.from_vpt_json({**record, "mouse": mouse})
        hotbar = record.get("hotbar", last_hotbar)
        if hotbar != last_hotbar:
            action[f"hotbar.{int(hotbar) + 1}"] = 1
        last_hotbar = hotbar
        actions.append(action)
    return actions


class MineRLGame:
    """A live MineRL 1.0 env as a `Game` with VPT-binned ``MultiDiscrete`` actions (see `MineRLActionCodec`).

    ``minerl`` (GitHub install + Java, old gym) is imported here, not at module import; without it the
    constructor raises ``ImportError`` with the install hint. Frames are the ``pov`` observation resized to
    ``frame_size``; ``fps`` is 20, the MineRL/VPT tick rate. Episodes end by ``done`` from the env, reported
    as ``terminated`` (old gym has no truncation flag).
    """

    def __init__(self, env_id: str = "MineRLBasaltFindCave-v0", frame_size: tuple[int, int] = (64, 64),
                 **make_kwargs: Any) -> None:
        try:
            import gym  # MineRL 1.0 registers with old gym (<= 0.23.1), not Gymnasium
            import minerl  # noqa: F401  (registers the MineRL env ids)
        except ImportError as error:
            raise ImportError(
                f"make_game('minerl:{env_id}') needs MineRL 1.0, which is not installed ({error}). Install it with "
                "`pip install git+https://github.com/minerllabs/minerl@v1.0.0` (needs Java 8 and old gym/numpy; "
                "see its docs). The VPT action codec and importer work without it."
            ) from error
        self.env_id = env_id
        self.name = f"minerl:{env_id}"
        self.frame_size = check_frame_size(frame_size)
        self.fps = 20
        self.codec = MineRLActionCodec()
        self.action_space = self.codec.action_space
        self._env = gym.make(env_id, **make_kwargs)
        self._episode_over: bool | None = None

    def _frame(self, observation: dict) -> np.ndarray:
        return resize_frame(np.asarray(observation["pov"], dtype=np.uint8), self.frame_size)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode (``seed`` goes to ``env.seed`` when given); returns the first frame."""
        if seed is not None:
            self._env.seed(int(seed))
        observation = self._env.reset()
        self._episode_over = False
        return self._frame(observation)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Apply one code of `action_space`; returns ``(frame, reward, terminated, truncated, info)``."""
        if self._episode_over is None:
            raise RuntimeError(f"{self.name}: step called before reset()")
        if self._episode_over:
            raise RuntimeError(f"{self.name}: step called after the episode ended; call reset() first")
        env_action = self._env.action_space.noop()
        env_action.update(self.codec.decode(action))
        observation, reward, done, info = self._env.step(env_action)
        self._episode_over = bool(done)
        return self._frame(observation), float(reward), bool(done), False, dict(info)

    def close(self) -> None:
        self._env.close()
        self._episode_over = None
