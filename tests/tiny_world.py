"""A tiny random-weight WorldModel built in tests, never downloaded."""
import torch


def make_tiny_world(action_space=None, frame_size=(16, 16), prompts=4, seed=0, termination_bias=-20.0,
                    window_frames=4, sampler_steps=2, previous_frame_input=False):
    """A random-weight WorldModel over 16x16 pixel frames, with `prompts` real-looking prompt clips.

    `termination_bias` sets the outcome head's termination logit (-20: never ends, +20: every step ends).
    """
    from generator.codec import CodecConfig, build_codec
    from generator.model import DiT, dit_config
    from generator.pretrained import SamplingConfig, WorldModel, WorldModelInfo

    action_space = action_space or {"type": "Discrete", "n": 5, "start": 0}
    torch.manual_seed(seed)
    dit = DiT(dit_config("tiny", latent_size=frame_size, action_space=action_space, window_frames=window_frames,
                         previous_frame_input=previous_frame_input))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.05)
        dit.outcome_head[-1].bias[1] = termination_bias
        dit.outcome_head[-1].weight[1].zero_()
    codec = build_codec(CodecConfig(kind="pixels", frame_size=frame_size))
    g = torch.Generator().manual_seed(seed)
    p = 2
    kind = action_space["type"]
    if kind == "Discrete":
        actions = torch.randint(0, action_space["n"], (prompts, p), generator=g)
    elif kind == "MultiDiscrete":
        actions = torch.stack([torch.randint(0, n, (prompts, p), generator=g) for n in action_space["nvec"]], -1)
    else:
        actions = torch.rand(prompts, p, *action_space["shape"], generator=g) * 2 - 1
    bank = {
        "frames": torch.randint(0, 256, (prompts, p, *frame_size, 3), generator=g, dtype=torch.uint8),
        "actions": actions,
        "has_action": torch.tensor([[False, True]] * prompts),
    }
    info = WorldModelInfo(game="synthetic", frame_size=frame_size, fps=10, action_space=action_space)
    return WorldModel(dit, codec, SamplingConfig(sampler_steps=sampler_steps, context_noise=0.1), info, bank).eval()
