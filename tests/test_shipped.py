"""The world model shipped in world_env/assets/crafter: loads offline, matches its config, is deterministic per seed."""
import gymnasium
import numpy as np
import torch

import world_env  # noqa: F401  (registers nextframe/Crafter-v0)
from generator.checkpoint import load_checkpoint
from generator.model import dit_config
from generator.pretrained import WorldModel
from world_env.assets import DEFAULT_MODEL, default_checkpoint


def test_shipped_weights_fit_the_budget_and_match_their_config():
    files = [p for p in DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20
    config, tensors = load_checkpoint(default_checkpoint())  # checksums and tensor shapes verified
    world = WorldModel.from_pretrained(default_checkpoint())
    assert world.info.game == "crafter" and tuple(world.info.frame_size) == (64, 64)
    expected = dit_config("tiles", action_space=world.info.action_space, codebook_size=world.codec.config.codes,
                          depth=4, copy_prior=0.0, reward_values=(-0.1, 0.0, 0.1, 1.0), outcome_pool=True,
                          motion_classes=5)
    assert world.dit.config == expected
    assert world.codec.config.kind == "tiles" and torch.equal(world.dit.codebook, world.codec.codebook)
    # tile places: the centre shows only player sprites, the bottom inventory row only its glyphs
    assert world.codec.places is not None and torch.equal(world.dit.code_places, world.codec.places)
    allowed = world.codec.places.sum(-1)  # codes per tile position, row-major over the 9x9 grid
    assert allowed[3 * 9 + 4] < allowed[0] / 2 and allowed[72:].sum() < 9 * 2
    assert sum(t.numel() for t in world.dit.state_dict().values()) == sum(t.numel() for t in tensors["model"].values())
    assert world.prompts is not None and world.prompts["frames"].shape[2:] == (64, 64, 3)
    # each prompt clip knows its episode step (the frame positions a dream starts from)
    assert world.prompts["steps"].shape == (len(world.prompts["frames"]),) and world.prompts["steps"].max() > 150
    assert all(torch.isfinite(p).all() for p in world.dit.parameters())
    # rewards and terminations are read off the frames by an outcome model tied to this codec
    assert world.outcome is not None and torch.equal(world.outcome.codebook, world.codec.codebook.float())
    assert world.outcome.config.reward_values == world.dit.config.reward_values
    # the view's move is decided first: the outcome model's motion head draws it, the DiT is conditioned on it
    assert world.outcome.config.motion_classes == world.dit.config.motion_classes == 5
    # unchanged tiles keep the pixels they were shown with (the prompt's own light), not their codes' copies
    assert world.sampling.carry_tiles
    export = world.info.training["export"]  # the export that attached it, somewhere in the chain of exports
    while "outcome" not in export:
        export = export["previous"]
    val = export["outcome"]["val"]
    assert val["reward_positive"]["recall"] > 0.5 and val["termination"]["recall"] > 0.5
    # Crafter's achievements pay once per episode: the outcome model reads which one a step unlocks, off the state
    # and the action, and the env keeps each row's unlocked set
    from world_env.games.crafter_game import CRAFTER_ACHIEVEMENTS

    assert world.outcome.config.events == CRAFTER_ACHIEVEMENTS and world.outcome.config.event_input == "action"
    assert val["event"]["precision"] > 0.5 and val["event"]["recall"] > 0.5


def rollout(seed: int, steps: int = 4) -> np.ndarray:
    env = gymnasium.make("nextframe/Crafter-v0", device="cpu", sampler_steps=1)  # no checkpoint: the shipped model
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for action in [0, 3, 3, 5][:steps]:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and np.isfinite(reward)
        frames.append(obs)
    env.close()
    return np.stack(frames)


def test_shipped_model_is_deterministic_per_seed():
    torch.set_num_threads(1)
    a, b, c = rollout(0), rollout(0), rollout(1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[1:].std() > 5  # frames with content, not a flat image
