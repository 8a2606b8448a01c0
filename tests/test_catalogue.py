"""Models written the ordinary way (tests/catalogue.py) through every backend, prediction, ArviZ and saving."""

import math
import warnings

import arviz as az
import pytest
import torch

import zoo
from zoo.inference.draws import DrawRunner

from .catalogue import CATALOGUE

OPTIONS = {
    "svi": dict(guide="full-rank", num_steps=600, lr=0.05, num_samples=300),
    "laplace": dict(num_steps=600, lr=0.05, num_samples=300),
    "nuts": dict(num_warmup=150, num_samples=150, num_chains=1, max_tree_depth=6),
}
CASES = [(entry, backend) for entry in CATALOGUE for backend in entry.backends]


@pytest.fixture(scope="module", autouse=True)
def registered():
    for entry in CATALOGUE:
        zoo.register_model(f"catalogue-{entry.name}", task="custom", likelihood="see tests/catalogue.py")(
            lambda model=entry.model: model)
    yield
    for entry in CATALOGUE:
        zoo.unregister_model(f"catalogue-{entry.name}")


def _data(entry, args):
    """The keyword-data entry passes its data by name."""
    return dict(zip(("x", "y"), args, strict=True)) if entry.name == "keyword-data" else args


def _value(post, truth):
    name, _ = truth
    site, _, index = name.partition("[")
    draws = {**post.flat_samples(), **{k: v.reshape(-1, *v.shape[2:]) for k, v in post.deterministic.items()}}
    values = draws[site]
    return values[:, int(index[:-1])] if index else values


FITS = {}


def _fit(entry, backend, train):
    """One fit per model and backend, shared by the tests (the specific tests reuse the sweep's fits)."""
    if (entry.name, backend) not in FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zoo.ZooWarning)  # short fits: an unconverged MAP is not the topic
            FITS[entry.name, backend] = zoo.fit(zoo.load(f"catalogue-{entry.name}"), _data(entry, train), backend,
                                                seed=0, **OPTIONS[backend])
    return FITS[entry.name, backend]


@pytest.mark.parametrize("entry, backend", CASES, ids=[f"{e.name}-{b}" for e, b in CASES])
def test_model_through_backend(entry, backend, tmp_path):
    train, test = entry.make()
    post = _fit(entry, backend, train)
    assert post.info["vectorized"] in ("plate", "vmap", "loop")
    if entry.truth is not None:
        draws = _value(post, entry.truth)
        # nuts within 4 posterior sds of the truth; the approximations within 6 (short fits, small data)
        bound = (4 if backend == "nuts" else 6) * float(draws.std()) + 0.05
        assert abs(float(draws.mean()) - entry.truth[1]) < bound, (float(draws.mean()), float(draws.std()))
    sites = entry.sites or (None,)
    inputs = test[:len(test) - len(sites)]
    scores = {}
    for site in sites:
        pred = post.predict(inputs, site=site)
        if inputs:  # a model of observations alone predicts as many as it draws
            assert pred.mean.shape[0] == test[-1].shape[0]
        scores[site] = post.evaluate(_data(entry, test), site=site)
        assert all(math.isfinite(v) for v in scores[site].values()), scores[site]
    idata = post.to_arviz(_data(entry, train))
    observed = entry.sites or post.sites.observed
    assert set(observed) <= set(idata.log_likelihood.data_vars)
    for site in observed:
        loo = az.loo(idata, var_name=site)
        assert math.isfinite(float(loo.elpd_loo))
    # the draws' log-likelihood is the same by a plain loop over draws: the vectorised path is right
    site = observed[0]
    fast = post.log_likelihood(_data(entry, test), site=site)
    args = zoo._data.as_args(_data(entry, test), model=post.model.model)[0]
    node = lambda trace, _: {"lp": trace.nodes[site]["fn"].log_prob(trace.nodes[site]["value"])}  # noqa: E731
    loop = DrawRunner(post.model.model, post.sites, "loop").run(post.flat_samples(), args, node)
    assert torch.allclose(fast, loop["lp"], atol=1e-4, rtol=1e-4)
    # a saved posterior predicts exactly as the fitted one
    loaded = zoo.load_posterior(post.save(tmp_path / "post"))
    for site in sites:
        assert loaded.evaluate(_data(entry, test), site=site) == pytest.approx(scores[site], rel=1e-5)


def test_deterministic_sites_are_in_the_posterior_group():
    entry = next(e for e in CATALOGUE if e.name == "deterministic")
    post = _fit(entry, "nuts", entry.make()[0])
    sigma = post.deterministic["sigma"]
    assert torch.allclose(sigma, post.samples["log_sigma"].exp())
    assert post.to_arviz().posterior["sigma"].shape == (1, 150)


def test_noncentred_group_effects_are_deterministic_and_recovered():
    entry = next(e for e in CATALOGUE if e.name == "varying-intercepts-noncentred")
    post = _fit(entry, "nuts", entry.make()[0])
    a = post.deterministic["a"]
    assert a.shape == (1, 150, 8)
    assert torch.allclose(a, post.samples["mu"][..., None] + post.samples["tau"][..., None] * post.samples["z"],
                          atol=1e-5)


def test_several_observed_sites_need_site_named():
    entry = next(e for e in CATALOGUE if e.name == "two-observed-sites")
    train, test = entry.make()
    post = _fit(entry, "laplace", train)
    with pytest.raises(zoo.ZooError, match="say which with site="):
        post.predict(test[:1])
    with pytest.raises(zoo.ZooError, match="is a latent site"):
        post.evaluate(test, site="w")
    with pytest.raises(zoo.ZooError, match="not an observed site"):
        post.evaluate(test, site="nope")
    assert post.predict(test[:1], site="z").probs.shape == (30, 2)


def test_nested_plates_keep_their_shape():
    entry = next(e for e in CATALOGUE if e.name == "nested-plates")
    train, test = entry.make()
    post = _fit(entry, "nuts", train)
    assert post.samples["theta"].shape == (1, 150, 5)
    assert post.log_likelihood(test).shape == (150, 8, 5)
