"""The main job: the shipped dream world running next to the real game, in one command, offline.

`run_demo` loads a world model (the one shipped in `world_env/assets/crafter` unless told otherwise), starts the real
game from a seed, and prompts every dream env with the real game's first frames. Then one sticky-random action
stream per env drives `num_envs` dream envs (batched; speculation in its default "auto" mode: on only while it
measures that it pays) for `steps` steps; env 0's stream also drives the real game, so env 0 and the real game
are the same start under the same actions. It reports the dream's
env-steps/s next to the real game's steps/s, writes a side-by-side video (real | dream | difference) and a PNG
plot (PSNR of dream env 0 to the real game over time, and the two speeds), and a JSON of every figure.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from world_env.assets import default_checkpoint
from world_env.policies import sticky_actions
from generator.metrics import psnr, shift_agreement
from generator.pretrained import resolve_device
from world_env.env import WorldModelVecEnv, load_world


@dataclass
class DemoConfig:
    checkpoint: str | None = None  # None: the shipped model
    num_envs: int = 8
    steps: int = 200
    sampler_steps: int | None = None  # None: the model's default
    speculation_depth: int = 2
    speculation: Literal["auto", "sync", "async"] = "auto"  # auto: speculate only while it measurably pays
    mean_repeat: float = 4.0  # sticky-random policy: mean action repeat
    prompt_frames: int = 4  # real frames that warm each dream env's KV cache
    seed: int = 0
    out: str = "demo"
    device: str = "auto"
    video_format: Literal["mp4", "gif"] = "mp4"


def real_rollout(game, seed: int, actions: np.ndarray) -> tuple[np.ndarray, float, int, np.ndarray]:
    """Frames of the real game from `reset(seed)` under `actions`: `(1 + steps, H, W, 3)`, steps/s, steps taken and
    the reward of each step `(steps,)`.

    Stops early if the episode ends. Only `step` is timed (a Crafter reset generates a world: seconds).
    """
    frames = [game.reset(seed=seed)]
    rewards = []
    seconds = 0.0
    for action in actions:
        t0 = time.perf_counter()
        frame, reward, terminated, truncated, _ = game.step(action)
        seconds += time.perf_counter() - t0
        frames.append(frame)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    taken = len(frames) - 1
    return np.stack(frames), taken / max(seconds, 1e-9), taken, np.asarray(rewards, dtype=np.float64)


def plot_demo(path: Path, psnr_per_step: list[float], copy_psnr: list[float], dream_fps: float, real_fps: float,
              num_envs: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    steps = np.arange(1, len(psnr_per_step) + 1)
    left.plot(steps, psnr_per_step, label="dream env 0 vs real")
    left.plot(steps, copy_psnr, label="last prompt frame vs real", linestyle="--")
    left.set_xlabel("steps after the prompt")
    left.set_ylabel("PSNR (dB)")
    left.set_title("Same start, same actions")
    left.legend()
    left.grid(alpha=0.3)
    bars = right.bar([f"dream\n({num_envs} envs)", "real game\n(1 env)"], [dream_fps, real_fps], color=["C0", "C2"])
    right.bar_label(bars, fmt="%.0f")
    right.set_ylabel("env-steps/s")
    right.set_title("Speed on this machine")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_demo(config: DemoConfig, log: Callable[[str], None] = print) -> dict:
    from generator.videos import difference, side_by_side, write_video
    from world_env.games import make_game

    if config.num_envs < 1 or config.steps < 1 or config.prompt_frames < 1:
        raise ValueError("num_envs, steps and prompt_frames must be >= 1")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = resolve_device(config.device)
    checkpoint = Path(config.checkpoint) if config.checkpoint else default_checkpoint()
    world = load_world(checkpoint, device)
    info = world.info
    game = make_game(info.game, tuple(info.frame_size), **info.game_kwargs)
    p, n = config.prompt_frames, config.num_envs
    actions = sticky_actions(game.action_space, n, p - 1 + config.steps, config.mean_repeat, config.seed)

    # The real game under env 0's stream; its first p frames prompt every dream env.
    real_frames, real_fps, taken, real_rewards = real_rollout(game, config.seed, actions[:, 0])
    game.close()
    if taken < p:
        raise RuntimeError(f"the real episode ended after {taken} steps, before the {p}-frame prompt was complete")
    prompt_actions = np.concatenate([np.zeros_like(actions[:1, 0]), actions[: p - 1, 0]])  # action into each frame
    prompt = {"frames": real_frames[:p], "actions": prompt_actions}

    env = WorldModelVecEnv(world, num_envs=n, device=str(device), sampler_steps=config.sampler_steps,
                           speculation_depth=config.speculation_depth, speculation=config.speculation)
    try:
        obs, _ = env.reset(seed=config.seed, options={"prompt": prompt})
        dream0, rewards0 = [obs[0]], []
        ended0 = False
        step_seconds, all_rewards = [], []
        stream = actions[p - 1:]
        for i in range(config.steps):
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, _ = env.step(stream[i])
            step_seconds.append(time.perf_counter() - t0)
            all_rewards.append(np.asarray(reward, dtype=np.float64))
            if not ended0:
                dream0.append(obs[0])
                rewards0.append(float(reward[0]))
                ended0 = bool(terminated[0] or truncated[0])
        stats = env.speculation_stats
        sampler_steps = env.sampler_steps
    finally:
        env.close()

    # Compare while both env 0 and the real game are in the same episode.
    dream = np.stack(dream0)  # (1 + k, H, W, 3): the last prompt frame, then generated frames
    real = real_frames[p - 1:]
    length = min(len(dream), len(real))
    dream, real = dream[:length], real[:length]
    dream_t, real_t = torch.from_numpy(dream), torch.from_numpy(real)
    # Rewards over the same compared steps, and the rate every dream env was paid at (what an agent is handed).
    paid = {"dream_env0": float(np.sum(rewards0[:length - 1])), "real": float(np.sum(real_rewards[p - 1:][:length - 1])),
            "dream_positive_per_100_steps": 100.0 * float((np.stack(all_rewards) > 0).mean())}
    psnr_per_step = psnr(dream_t[1:], real_t[1:]).tolist()
    copy_psnr = psnr(real_t[:1].expand_as(real_t[1:]), real_t[1:]).tolist()
    following = None
    if info.game == "crafter" and tuple(info.frame_size) == (64, 64) and length > 1:
        following = shift_agreement(torch.from_numpy(real)[None], torch.from_numpy(dream)[None])
    seconds = float(np.sum(step_seconds))
    dream_fps = n * config.steps / seconds
    video = write_video(out / f"demo.{config.video_format}", side_by_side(real, dream, difference(real, dream)),
                        fps=info.fps)
    plot = plot_demo(out / "demo.png", psnr_per_step, copy_psnr, dream_fps, real_fps, n)
    result = {
        "config": asdict(config),
        "checkpoint": str(checkpoint),
        "device": str(device),
        "sampler_steps": sampler_steps,
        "dream_env_steps_per_s": dream_fps,
        "dream_steps_per_s_per_env": config.steps / seconds,
        "dream_step_ms_mean": 1000.0 * seconds / config.steps,
        "real_steps_per_s": real_fps,
        "speculation": stats,
        "compared_steps": length - 1,
        "psnr_dream_vs_real": psnr_per_step,
        "psnr_copy_last_prompt_frame_vs_real": copy_psnr,
        "mean_psnr_first_16": float(np.mean(psnr_per_step[:16])) if psnr_per_step else float("nan"),
        "view_shift": following,
        "rewards": paid,
        "video": str(video),
        "plot": str(plot),
        "seconds_total": time.perf_counter() - started,
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float))
    log(f"dream: {n} envs x {config.steps} steps, {dream_fps:.1f} env-steps/s "
        f"({1000.0 * seconds / config.steps:.1f} ms per batched step, sampler steps {sampler_steps}, "
        f"speculation {stats['mode']} depth {config.speculation_depth}: on for {stats['speculating_steps']} of "
        f"{config.steps} steps, acceptance {stats.get('acceptance_rate', float('nan')):.2f})")
    log(f"real {info.game}: {real_fps:.1f} steps/s (1 env, stepping only)")
    log(f"dream env 0 vs real, same start and actions: PSNR {result['mean_psnr_first_16']:.1f} dB over the first "
        f"16 steps ({length - 1} steps compared)")
    if following is not None and following["moved_steps"]:
        log(f"dream env 0 follows the real view: moved with it on {following['moved_agreed']} of "
            f"{following['moved_steps']} steps where the real view moved, stayed on {following['stayed_agreed']} of "
            f"{following['stayed_steps']} where it stayed")
    log(f"rewards over those steps: dream env 0 {paid['dream_env0']:+.1f}, real {paid['real']:+.1f}; the {n} dream envs "
        f"were paid a positive reward on {paid['dream_positive_per_100_steps']:.1f} of every 100 steps")
    log(f"wrote {video}, {plot} and {out / 'demo.json'} in {result['seconds_total']:.1f} s")
    return result
