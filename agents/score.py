"""The Crafter score (Hafner, "Benchmarking the Spectrum of Agent Capabilities", ICLR 2022, section 3).

Success rate ``s_i``: the percentage (0..100) of episodes in which achievement ``i`` was unlocked at least once.
Score: ``S = exp(mean_i ln(1 + s_i)) - 1`` over all 22 achievements, a geometric mean offset by 1 % so that
rarely unlocked achievements still count (crafter's ``analysis/common.py`` ``compute_scores`` computes the same).
Both are percentages: a uniform random policy scores about 1.6, humans about 50.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

# crafter 1.8.3 `crafter.constants.achievements` (sorted names from its data.yaml; a test checks they agree), the
# order datasets record their counters in
from world_env.games.crafter_game import CRAFTER_ACHIEVEMENTS


def unlocked(achievements: Mapping[str, float] | Iterable[str]) -> set[str]:
    """Names of the achievements unlocked in one episode.

    Takes crafter's end-of-episode ``info["achievements"]`` (``{name: times unlocked}``; unlocked when >= 1, as
    crafter's analysis counts it) or an iterable of unlocked names.
    """
    if isinstance(achievements, Mapping):
        names = {name for name, count in achievements.items() if count >= 1}
        known = set(achievements)
    else:
        names = set(achievements)
        known = names
    unknown = known - set(CRAFTER_ACHIEVEMENTS)
    if unknown:
        raise ValueError(f"unknown Crafter achievements {sorted(unknown)}; known: {list(CRAFTER_ACHIEVEMENTS)}")
    return names


def success_rates(episodes: Iterable[Mapping[str, float] | Iterable[str]]) -> dict[str, float]:
    """Per achievement, the percentage of ``episodes`` (each as `unlocked` takes it) that unlocked it at least once.

    Returns all 22 names in crafter's order, values in [0, 100]. Raises ``ValueError`` for no episodes.
    """
    sets = [unlocked(episode) for episode in episodes]
    if not sets:
        raise ValueError("success rates need at least one episode")
    return {name: 100.0 * sum(name in s for s in sets) / len(sets) for name in CRAFTER_ACHIEVEMENTS}


def crafter_score(rates: Mapping[str, float]) -> float:
    """``exp(mean_i ln(1 + s_i)) - 1`` over all 22 achievements, ``s_i`` in percent (0..100); the result too.

    ``rates`` must name every Crafter achievement exactly once (a missing one would silently raise the score).
    """
    missing = set(CRAFTER_ACHIEVEMENTS) - set(rates)
    extra = set(rates) - set(CRAFTER_ACHIEVEMENTS)
    if missing or extra:
        raise ValueError(f"crafter_score needs exactly the 22 Crafter achievements; missing {sorted(missing)}, "
                         f"unknown {sorted(extra)}")
    values = [float(rates[name]) for name in CRAFTER_ACHIEVEMENTS]
    bad = [v for v in values if not 0.0 <= v <= 100.0]
    if bad:
        raise ValueError(f"success rates are percentages in [0, 100], got {bad[:3]}")
    return math.exp(sum(math.log1p(v) for v in values) / len(values)) - 1.0


def score_episodes(episodes: Iterable[Mapping[str, float] | Iterable[str]]) -> dict:
    """``{"score", "success_rates", "episodes"}`` for a list of episodes' achievements."""
    episodes = list(episodes)
    rates = success_rates(episodes)
    return {"score": crafter_score(rates), "success_rates": rates, "episodes": len(episodes)}
