"""The auto-speculation controller alone, driven by a simulated loop with a fake clock."""
import numpy as np

from world_env.speculation import SpeculationController


def simulate(controller, steps, think, row_cost, accept, speculation_period, num_envs=16, seed=0):
    """Drive `controller` for `steps` steps of a loop: the caller thinks `think(i)` seconds between steps, a plain
    step generates every row at `row_cost` per row, a speculating step takes `speculation_period(i)` in all.
    Returns the decision of every step and the loop's total time."""
    rng = np.random.default_rng(seed)
    now, decisions = 0.0, []
    for i in range(steps):
        repeated = rng.binomial(num_envs, accept) / num_envs
        speculating = controller.step_started(now, repeated)
        decisions.append(speculating)
        if speculating:
            rejected = round((1 - repeated) * num_envs)
            if rejected:
                controller.fresh_pass(rejected, rejected * row_cost)
            step = speculation_period(i) - think(i)
        else:
            controller.fresh_pass(num_envs, num_envs * row_cost)
            step = num_envs * row_cost
        now += step
        controller.step_ended(now)
        now += think(i)
    return np.array(decisions), now


def test_no_think_time_never_speculates():
    controller = SpeculationController(num_envs=16, depth=2)
    # even if speculating were (impossibly) free, a loop with nothing to hide it in never tries
    decisions, _ = simulate(controller, 2000, think=lambda i: 1e-4, row_cost=0.01, accept=0.77,
                            speculation_period=lambda i: 0.01)
    assert not decisions.any() and controller.switches == 0
    assert controller.bound() < 1.0


def test_a_sleeping_agent_that_hides_the_work_gets_speculation_and_keeps_it():
    # 1 env, 50 ms agent, 34 ms per frame, acceptance 0.9: async speculation hides the refill in the agent's time
    think, cost, accept = 0.05, 0.034, 0.9
    controller = SpeculationController(num_envs=1, depth=2)
    decisions, total = simulate(controller, 2000, think=lambda i: think, row_cost=cost, accept=accept, num_envs=1,
                                speculation_period=lambda i: think + (1 - accept) * cost)
    assert decisions[100:].mean() > 0.97  # on, apart from short re-checks of plain stepping
    assert total < 0.95 * 2000 * (think + cost)


def test_where_speculation_loses_probes_cost_a_vanishing_share():
    # the optimistic bound says "maybe" (long think time) but the agent computes on the same cores, so the
    # background work adds to the period instead of hiding in it
    think, cost = 0.05, 0.004
    controller = SpeculationController(num_envs=16, depth=2)
    decisions, total = simulate(controller, 4000, think=lambda i: think, row_cost=cost, accept=0.77,
                                speculation_period=lambda i: think + 1.5 * 16 * cost)
    assert 0 < decisions.sum() < 0.03 * len(decisions)  # it tried, then backed off exponentially
    assert not decisions[-500:].any()
    plain = 4000 * (think + 16 * cost)
    assert total < 1.01 * plain


def test_switches_off_when_the_think_time_disappears():
    think, cost, accept = 0.05, 0.034, 0.9
    controller = SpeculationController(num_envs=1, depth=2)
    thinking = lambda i: think if i < 300 else 0.0  # noqa: E731  (the agent moves its work elsewhere)
    decisions, _ = simulate(controller, 400, think=thinking, row_cost=cost, accept=accept, num_envs=1,
                            speculation_period=lambda i: thinking(i) + max(0, cost - thinking(i)) + (1 - accept) * cost)
    assert decisions[100:300].mean() > 0.9
    assert not decisions[330:].any()
