"""The batched sampler's parts against known answers: Stan's warmup schedule, the U-turn checkpoints
against brute force, per-chain random streams, a chain's draws alone and among many, and bad input."""

from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo.inference._random import ChainRandom
from zoo.inference.adaptation import DualAveraging, MassEstimate, warmup_windows
from zoo.inference.batched import Kept
from zoo.inference.chees import _ChEESRun, halton
from zoo.inference.traced import close
from zoo.inference.trajectory import Metric, Point, _checkpoints, advance, example_advance, grow, schedule, start_tree


def test_warmup_windows_are_stans():
    assert [end for _, end in warmup_windows(1000)] == [100, 150, 250, 450, 950]  # Stan's defaults
    assert warmup_windows(1000)[0] == (75, 100)
    assert warmup_windows(100) == [(15, 90)]  # 15 % / 75 % / 10 %
    assert warmup_windows(10) == []


def test_checkpoints_cover_every_completed_subtree():
    # leaf n closes the aligned subtrees [n - 2^k + 1, n] for each trailing 1-bit; each is checked against the
    # slot its first leaf stored, which no leaf in between may overwrite
    for depth in range(1, 8):
        slots = {}
        for leaf in range(2**depth):
            low, high = _checkpoints(leaf)
            if leaf % 2 == 0:
                slots[high] = leaf
                continue
            closed = {leaf - 2**k + 1 for k in range(1, depth + 1) if (leaf + 1) % 2**k == 0}
            assert {slots[s] for s in range(low, high + 1)} == closed


def test_the_schedule_places_each_leaf_in_its_doubling():
    table = schedule(4, torch.device("cpu"))
    assert table.counter.tolist() == [1] + [2] * 2 + [3] * 4 + [4] * 8  # doubling d draws at offset 1 + d
    assert table.opens.nonzero().flatten().tolist() == [0, 1, 3, 7]
    assert table.closes.nonzero().flatten().tolist() == [0, 2, 6, 14]
    assert table.columns[5].tolist() == [1, 2, 5]  # leaf 5 is leaf j = 2 of doubling 2


def test_a_chain_that_is_not_going_changes_nothing():
    z = torch.randn(3, 2)
    start = Point(z, torch.randn(3, 2), -z.pow(2).sum(-1), -2 * z)
    tree = start_tree(start, -start.logp, tuple(torch.zeros(3, 3, 2) for _ in range(3)))
    going = torch.tensor([True, False, True])
    at = schedule(4, z.device).at(torch.tensor([0, 0, 0]), going)  # leaf 0 opens and closes doubling 0
    moved = grow(tree, torch.full((3,), 0.1), Metric(torch.ones(3, 2)).inverse_mass, torch.rand(3, 3), at,
                 lambda z: (-z.pow(2).sum(-1), -2 * z))
    leaves = zip(torch.utils._pytree.tree_leaves(tree), torch.utils._pytree.tree_leaves(moved), strict=True)
    for a, b in leaves:
        assert torch.equal(a[..., 1, :] if a.dim() == 3 else a[1], b[..., 1, :] if b.dim() == 3 else b[1])
    assert int(moved.n_steps[0]) == 1 and int(moved.depth[0]) == 1


def test_a_run_of_leaves_hands_back_what_it_was_given():
    # its outputs are fed to the next call, which a compiled run is specialised to: same dtypes, contiguous
    z = torch.randn(3, 2)
    density = lambda z: (-z.pow(2).sum(-1), -2 * z)  # noqa: E731
    point = Point(z, torch.zeros_like(z), *density(z))
    given = example_advance(point, Metric(torch.ones(3, 2)), 4, ChainRandom(0, 3).keys, 5)
    tree, progress, finished, _ = advance(*given, density=density)
    for before, after in zip(torch.utils._pytree.tree_leaves(given[:2]),
                             torch.utils._pytree.tree_leaves((tree, progress)), strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape and after.is_contiguous()
    assert torch.equal(progress.done, finished.long())  # each chain's first trajectory ended in 8 leaves or not
    assert not close(torch.tensor([1]), torch.tensor([1.0]))  # the compile check sees a dtype change


def test_kept_draws_are_each_chains_own_in_order():
    kept = Kept(3, 2)
    kept.put({"x": torch.tensor([1.0, 10.0])})
    kept.put({"x": torch.tensor([2.0, 20.0])}, torch.tensor([True, False]))
    assert kept.complete() == 1
    kept.put({"x": torch.tensor([3.0, 30.0])})
    assert kept.complete() == 2
    assert kept.first(2)["x"].tolist() == [[1.0, 2.0], [10.0, 30.0]]


def test_masked_adaptation_is_each_chains_alone():
    acceptance = torch.tensor([0.3, 0.9])
    both, first = DualAveraging(0.8, torch.zeros(2)), DualAveraging(0.8, torch.zeros(2))
    both.update(acceptance)
    first.update(acceptance, torch.tensor([True, False]))
    assert first.log_step[0] == both.log_step[0] and first.log_step[1] == 0.0 and first.t.tolist() == [1, 0]
    z = torch.randn(4, 2, 3)
    masked, alone = MassEstimate(2, 3, False, False, z[0]), MassEstimate(1, 3, False, False, z[0])
    for i, row in enumerate(z):
        masked.add(row, torch.tensor([True, i % 2 == 0]))  # chain 1 adds rows 0 and 2
        if i % 2 == 0:
            alone.add(row[1:])
    torch.testing.assert_close(masked.mean[1], alone.mean[0])
    torch.testing.assert_close(masked.m2[1], alone.m2[0])


def test_chain_numbers_do_not_depend_on_the_batch():
    many, alone = ChainRandom(7, 64), ChainRandom(7, 1, first=5)
    assert torch.equal(many.uniform(3, 100)[5], alone.uniform(3, 100)[0])
    u = many.uniform(11, 5000)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    n = many.normal(12, 5000)
    assert abs(float(n.mean())) < 0.02 and abs(float(n.std()) - 1) < 0.02


def test_chees_restarts_stuck_chains_from_the_others():
    run = _ChEESRun.__new__(_ChEESRun)  # only the restart's state
    z = torch.arange(12.0).reshape(6, 2)
    logp = z.sum(1)
    logp[2] = -1000.0  # it moves, but in a mode of negligible mass
    before = Point(z, -z, logp, 2 * z)
    run.point, run.random, run.restarted = before, ChainRandom(0, 6), 0
    run.chains = SimpleNamespace(world=None)  # one process
    run.accepted = torch.tensor([3, 0, 1, 0, 0, 7])  # chains 1, 3 and 4 accepted nothing
    run._restart_stuck(10)
    kept = [0, 5]
    assert torch.equal(run.point.z[kept], z[kept]) and run.restarted == 4
    for c in (1, 2, 3, 4):  # a whole point of a kept chain: position, momentum, log density, gradient
        donor = int(run.point.z[c, 0]) // 2
        assert donor in kept
        assert all(torch.equal(a[c], b[donor]) for a, b in zip(run.point, before, strict=True))
    assert int(run.accepted.sum()) == 0  # counting starts again


def test_pooled_mass_is_the_variance_of_all_chains_draws():
    z = torch.randn(50, 3, 2) * torch.tensor([1.0, 3.0]) + torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    pooled, alone = MassEstimate(3, 2, False, True, z), MassEstimate(3, 2, True, False, z)
    for row in z:
        pooled.add(row)
        alone.add(row)
    n = 150
    expected = z.reshape(-1, 2).var(0) * n / (n + 5) + 1e-3 * 5 / (n + 5)
    torch.testing.assert_close(pooled.inverse_mass(), expected.expand(3, 2))
    torch.testing.assert_close(alone.inverse_mass()[1], torch.cov(z[:, 1].T) * 50 / 55 + 1e-3 * 5 / 55 * torch.eye(2))


def _eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta_raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


SCHOOLS = (torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12]), torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18]))


def test_a_chain_draws_the_same_alone_or_among_many():
    options = dict(num_warmup=60, num_samples=30, pooled_mass=False, max_tree_depth=5, seed=4)
    alone = zoo.fit(_eight_schools, SCHOOLS, "nuts", num_chains=1, **options)
    among = zoo.fit(_eight_schools, SCHOOLS, "nuts", num_chains=64, **options)
    torch.testing.assert_close(among.samples["mu"][0], alone.samples["mu"][0])
    assert not torch.equal(among.samples["mu"][0], among.samples["mu"][1])


@pytest.mark.slow  # it compiles
@pytest.mark.parametrize("backend, options", [("nuts", dict(max_tree_depth=5)), ("chees", dict(num_chains=8))])
def test_auto_density_compiles_once_the_projected_steps_pay_for_it(backend, options, monkeypatch):
    import zoo.inference.batched as batched

    options = dict(num_warmup=100, num_samples=100, seed=1, **options)
    short = zoo.fit(_eight_schools, SCHOOLS, backend, **options)
    assert short.info["density"] == "traced" and "compiled_from_iteration" not in short.info
    monkeypatch.setattr(batched, "AUTO_COMPILE_STEPS", 300)  # the rest of these runs project to 500 and more
    switched = zoo.fit(_eight_schools, SCHOOLS, backend, **options)
    assert switched.info["density"] == "compiled" and switched.info["compiled_from_iteration"] == 25
    assert switched.samples["mu"].shape == short.samples["mu"].shape
    assert abs(float(switched.samples["mu"].mean()) - 4.4) < 1.5  # the reference mean; sd 3.3


@pytest.mark.parametrize("density", ["traced", pytest.param("compiled", marks=pytest.mark.slow)])
def test_eight_schools_matches_its_reference(density):
    # the non-centred eight schools posterior (posteriordb eight_schools_noncentered): mu 4.4 (3.3), tau 3.6 (3.2)
    post = zoo.fit(_eight_schools, SCHOOLS, "nuts", num_samples=500, seed=0, density=density)
    assert post.info["density"] == density
    mu, tau = post.samples["mu"].flatten(), post.samples["tau"].flatten()
    assert float(mu.mean()) == pytest.approx(4.4, abs=0.5) and float(mu.std()) == pytest.approx(3.3, abs=0.4)
    assert float(tau.mean()) == pytest.approx(3.6, abs=0.5) and float(tau.std()) == pytest.approx(3.2, abs=0.5)
    assert post.num_chains == 4 and int(post.sample_stats["diverging"].sum()) < 20
    assert set(post.sample_stats) >= {"diverging", "tree_depth", "n_steps", "energy", "step_size",
                                      "acceptance_rate", "lp"}


def test_chees_matches_the_eight_schools_reference():
    post = zoo.fit(_eight_schools, SCHOOLS, "chees", num_chains=64, num_warmup=400, num_samples=100, seed=0)
    mu, tau = post.samples["mu"].flatten(), post.samples["tau"].flatten()
    assert float(mu.mean()) == pytest.approx(4.4, abs=0.3) and float(mu.std()) == pytest.approx(3.3, abs=0.3)
    assert float(tau.mean()) == pytest.approx(3.6, abs=0.3) and float(tau.std()) == pytest.approx(3.2, abs=0.4)
    steps = post.sample_stats["n_steps"]
    assert torch.equal(steps, steps[:1].expand_as(steps))  # every chain the same number of leapfrog steps
    assert 1 < post.info["trajectory_length"] < 20 and int(post.sample_stats["diverging"].sum()) < 20


def test_halton_spreads_evenly():
    assert [halton(i) for i in range(1, 8)] == [0.5, 0.25, 0.75, 0.125, 0.625, 0.375, 0.875]


@pytest.mark.parametrize("options, match", [(dict(num_chains=1), "at least 2"),
                                            (dict(learning_rate=0.0), "learning_rate")])
def test_bad_chees_options_are_refused(options, match):
    with pytest.raises(zoo.ZooError, match=match):
        zoo.fit(_eight_schools, SCHOOLS, "chees", **options)


@pytest.mark.parametrize("options, match", [(dict(num_chains=0), "num_chains must be a positive integer"),
                                            (dict(max_tree_depth=0), "max_tree_depth"),
                                            (dict(init_spread=-1.0), "init_spread"),
                                            (dict(target_accept=1.0), "target_accept")])
def test_bad_options_are_refused(options, match):
    with pytest.raises(zoo.ZooError, match=match):
        zoo.fit(_eight_schools, SCHOOLS, "nuts", **options)


def test_a_density_undefined_at_every_start_names_the_site():
    def model(y):
        rate = pyro.sample("rate", dist.HalfNormal(1.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Poisson(0.0 * rate), obs=y)  # counts of 1 at a rate of 0: log p = -inf

    with pytest.raises(zoo.ZooError, match=r"not finite at its initial point at sites \['y'\]"):
        zoo.fit(model, (torch.ones(3),), "nuts", init_spread=0.0)


def test_a_bnns_batched_density_is_linear_in_the_data():
    # f, one deterministic per data point: with its dims as event dims, the Delta broadcast against the data
    # plate into (N, C, N) tensors in every log density, and the step's threads were chosen by those
    from zoo.inference._base import Problem
    from zoo.inference.sites import Sites
    from zoo.inference.traced import SERIAL_MAX_ELEMENTS, largest_tensor, step_threads, value_and_grad_fn

    x, y = torch.randn(300, 2), torch.randn(300)
    zm = zoo.load("bnn", in_features=2, hidden=[5])
    trace = pyro.poutine.trace(zm.model).get_trace(x, y)
    assert trace.nodes["f"]["fn"].event_dim == 0
    problem = Problem(zm.model, (x, y), Sites.of(zm.model, (x, y)), 1, False, zm.init_loc_fn)
    _, log_density, theta = problem.flat()
    graph, mode = value_and_grad_fn(log_density, theta.expand(4, -1), "traced")
    largest = largest_tensor(graph)
    assert mode == "traced" and largest == 4 * 300 * 5
    assert step_threads(graph) == 1 and largest < SERIAL_MAX_ELEMENTS
