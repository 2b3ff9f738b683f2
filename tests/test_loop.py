"""The world-model RL loop end to end on real Crafter with a tiny world model and tiny budgets: every phase runs, the
collected episodes replay from their seeds, and a run stopped after a phase (and killed in the middle of the next)
resumes to exactly the state of a run that went straight through."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from agents.loop import LoopConfig, run_loop
from generator.data import open_datasets
from generator.train import TrainConfig, train
from world_env.collect import collect
from world_env.games import make_game

TINY_64 = dict(patch_size=16, dim=32, depth=1, heads=2, window_frames=4)


@pytest.fixture(scope="module")
def generator_run(tmp_path_factory):
    """A two-step generator run on two short random Crafter episodes: the loop continues it."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("loop")
    collect("crafter", root / "initial", episodes=2, policy="random", max_steps=10, progress=False)
    train(TrainConfig(data=str(root / "initial"), out=str(root / "generator"), model="tiny", steps=2, batch_size=2,
                      clip_frames=4, warmup_steps=1, ckpt_every=1000, eval_windows=1, progress=False,
                      sampler_steps=1, model_overrides=TINY_64))
    return root / "generator"


def loop_config(out, generator, **kw) -> LoopConfig:
    base = dict(out=str(out), generator=str(generator), real_steps=32, real_steps_per_iteration=16, real_envs=2,
                episode_steps=6, generator_steps_per_iteration=2, dream_steps_per_iteration=16, dream_envs=2,
                horizon=3, burn_in=2, n_steps=8, batch_size=16, n_epochs=1, device="cpu", policy_device="cpu",
                progress=False, seed=3)
    base.update(kw)
    return LoopConfig(**base)


def final_state(out):
    state = json.loads((out / "loop_state.json").read_text())
    for record in state["history"]:
        record.pop("seconds")
    state.pop("config")
    state.pop("phases_done")
    from stable_baselines3 import PPO

    agent = PPO.load(out / "agent" / "model.zip", device="cpu")
    policy = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    optimizer = agent.policy.optimizer.state_dict()["state"]
    generator = load_file(out / "generator" / "train_state" / "model.safetensors")
    data = sorted((p.parent.name, e["checksum"], e["seed"]) for p in (out / "real").glob("*/meta.json")
                  for e in json.loads(p.read_text())["episodes"])
    return state, policy, optimizer, generator, data, agent.num_timesteps


@pytest.mark.parametrize("real_ppo", [False, True])
def test_the_loop_runs_end_to_end_and_resumes_after_a_kill_to_the_same_state(generator_run, tmp_path, real_ppo):
    torch.set_num_threads(1)
    straight = run_loop(loop_config(tmp_path / "straight", generator_run, real_ppo=real_ppo))
    assert straight["finished"] and straight["real_steps"] == 32 and straight["dream_steps"] == 32
    assert straight["generator_step"] == 2 + 2 * 2  # continued from the run's step 2
    state, *_ = final_state(tmp_path / "straight")
    assert [(r["iteration"], r["phase"]) for r in state["history"]] == [
        (i, phase) for i in range(2) for phase in ("collect", "generator", "dream")]
    assert all(r["real_steps"] == 16 for r in state["history"] if r["phase"] == "collect")

    # The generator trained on the initial data plus every collected folder; the collected episodes replay in the
    # real game from their recorded seeds and actions.
    data = open_datasets(f"{tmp_path / 'straight' / 'real' / 'iter_0000'},{tmp_path / 'straight' / 'real' / 'iter_0001'}")
    assert sum(data.episode_lengths) == 32
    game = make_game("crafter", (64, 64), length=None)
    episode = data.read_steps(0, 0, data.episode_lengths[0] + 1)
    frame = game.reset(data.episode_seeds[0])
    assert np.array_equal(frame, episode["frames"][0].numpy())
    assert data.achievements == list(game.achievement_names)  # the loop records the game's achievement counters
    for action, recorded, counts in zip(episode["actions"][1:], episode["frames"][1:], episode["achievements"][1:]):
        frame, _, _, _, info = game.step(int(action))
        assert np.array_equal(frame, recorded.numpy())
        assert np.array_equal(info["achievement_counts"], counts.numpy())
    saved = json.loads((tmp_path / "straight" / "generator" / "model" / "config.json").read_text())
    assert saved["info"]["training"]["train_config"]["data"].count(",") == 2  # initial + two iterations

    # Stop after three phases, leave a half-written collect folder as a kill would, resume with the same command.
    out = tmp_path / "resumed"
    first = run_loop(loop_config(out, generator_run, real_ppo=real_ppo, stop_after=3))
    assert not first["finished"] and (first["iteration"], first["phase"]) == (1, "collect")
    (out / "real" / "iter_0001" / "episode_000000.tmp-dead").mkdir(parents=True)
    resumed = run_loop(loop_config(out, generator_run, real_ppo=real_ppo))
    assert resumed["finished"]
    a, b = final_state(tmp_path / "straight"), final_state(out)
    assert a[0] == b[0]  # the loop state: phases, step counts, returns, losses
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])  # the agent's weights
    assert all(torch.equal(a[2][k]["exp_avg"], b[2][k]["exp_avg"]) for k in a[2])  # and its optimizer
    assert all(torch.equal(a[3][k], b[3][k]) for k in a[3])  # the generator's weights
    assert a[4] == b[4] and a[5] == b[5]  # the collected data, the agent's step count

    with pytest.raises(ValueError, match="other settings"):
        run_loop(loop_config(out, generator_run, real_ppo=real_ppo, horizon=4))


def test_budgets_that_do_not_divide_are_refused(tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        run_loop(loop_config(tmp_path / "x", "", real_ppo=True, real_steps_per_iteration=24))


def test_the_no_dream_control_runs_only_the_real_phases(tmp_path):
    """Both model phases given 0 steps: PPO on the same real collection schedule and nothing else, with no world
    model at all (the control that separates what the dream adds)."""
    torch.set_num_threads(1)
    out = tmp_path / "control"
    summary = run_loop(loop_config(out, "", real_ppo=True, generator_steps_per_iteration=0,
                                   dream_steps_per_iteration=0))
    assert summary["finished"] and summary["real_steps"] == 32 and summary["dream_steps"] == 0
    state = json.loads((out / "loop_state.json").read_text())
    assert [r.get("skipped", False) for r in state["history"]] == [False, True, True] * 2
    assert not (out / "generator").exists()
    from stable_baselines3 import PPO

    assert PPO.load(out / "agent" / "model.zip", device="cpu").num_timesteps == 32  # learned on the real steps only
    with pytest.raises(ValueError, match="set real_ppo"):
        loop_config(tmp_path / "bad", "", dream_steps_per_iteration=0).check()
    with pytest.raises(ValueError, match="0 skips the phase"):
        loop_config(tmp_path / "bad", "", generator_steps_per_iteration=-1).check()


def test_a_fixed_world_dreams_in_the_given_model_and_never_trains_it(generator_run, tmp_path):
    """generator_steps_per_iteration 0 with dream steps: every dream phase uses the world `generator` names (a run's
    model/ or an exported model) as it is, alongside the real PPO steps."""
    torch.set_num_threads(1)
    weights = load_file(generator_run / "model" / "model.safetensors")
    out = tmp_path / "fixed"
    summary = run_loop(loop_config(out, generator_run, real_ppo=True, generator_steps_per_iteration=0,
                                   initial_data=str(generator_run.parent / "initial")))
    assert summary["finished"] and summary["real_steps"] == 32 and summary["dream_steps"] == 32
    assert summary["world_model"] == str(generator_run / "model")
    state = json.loads((out / "loop_state.json").read_text())
    assert [r.get("skipped", False) for r in state["history"]] == [False, True, False] * 2
    assert not (out / "generator").exists()
    after = load_file(generator_run / "model" / "model.safetensors")
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    from stable_baselines3 import PPO

    assert PPO.load(out / "agent" / "model.zip", device="cpu").num_timesteps == 64  # 32 real + 32 dream
    exported = generator_run / "model"  # an exported model has no train_state: its data must be named
    with pytest.raises(ValueError, match="give initial_data"):
        run_loop(loop_config(tmp_path / "no_data", exported, real_ppo=True, generator_steps_per_iteration=0))
    with pytest.raises(ValueError, match="holds no world model"):
        run_loop(loop_config(tmp_path / "no_world", tmp_path, real_ppo=True, generator_steps_per_iteration=0,
                             initial_data=str(generator_run.parent / "initial")))
    with pytest.raises(ValueError, match="set it to 0"):
        loop_config(tmp_path / "bad", generator_run, generator_steps_per_iteration=0,
                    outcome_steps_per_iteration=5).check()


@pytest.fixture(scope="module")
def tile_generator_run(tmp_path_factory):
    """A two-step tile-model run (codebook built from two short random Crafter episodes) the loop continues."""
    from generator.codec import CodebookConfig, build_codebook

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tile_loop")
    collect("crafter", root / "initial", episodes=2, policy="random", max_steps=10, progress=False)
    build_codebook(CodebookConfig(data=str(root / "initial"), out=str(root / "codec"), frame_stride=1, places=False))
    train(TrainConfig(data=str(root / "initial"), out=str(root / "generator"), model="tiles", codec=str(root / "codec"),
                      steps=2, batch_size=2, clip_frames=4, warmup_steps=1, ckpt_every=1000, eval_windows=1,
                      progress=False, sampler_steps=1,
                      model_overrides={"dim": 32, "depth": 1, "heads": 2, "window_frames": 4,
                                       "reward_values": [-0.1, 0.0, 0.1, 1.0]}))
    return root / "generator"


def test_the_loop_keeps_an_outcome_model_on_the_growing_data_and_the_dream_uses_it(tile_generator_run, tmp_path):
    from generator.outcome import load_outcome

    torch.set_num_threads(1)
    outcome = dict(outcome_steps_per_iteration=3, outcome_config={"dim": 16, "depth": 1, "heads": 2,
                                                                  "batch_size": 8, "eval_every": 0})
    straight = run_loop(loop_config(tmp_path / "straight", tile_generator_run, **outcome))
    assert straight["finished"] and straight["dream_steps"] == 32
    state = json.loads((tmp_path / "straight" / "loop_state.json").read_text())
    assert [r["outcome_step"] for r in state["history"] if r["phase"] == "generator"] == [3, 6]
    assert all(r["outcome_model"] for r in state["history"] if r["phase"] == "dream")
    model = load_outcome(tmp_path / "straight" / "outcome")
    assert model.training_report["config"]["data"].count(",") == 2  # initial + two iterations, as the generator
    # stopped after the first generator phase, then resumed: the same outcome model as the straight run
    first = run_loop(loop_config(tmp_path / "resumed", tile_generator_run, stop_after=2, **outcome))
    assert (first["iteration"], first["phase"]) == (0, "dream")
    assert load_outcome(tmp_path / "resumed" / "outcome").training_report["step"] == 3
    run_loop(loop_config(tmp_path / "resumed", tile_generator_run, **outcome))
    again = load_outcome(tmp_path / "resumed" / "outcome")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name])
    with pytest.raises(ValueError, match="fields the loop sets itself"):
        loop_config(tmp_path / "bad", tile_generator_run, outcome_config={"steps": 5}).check()
