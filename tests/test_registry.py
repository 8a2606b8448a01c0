import pyro
import pytest
import torch
from pyro import poutine

import zoo
from zoo._card import BACKENDS, TASKS
from zoo.inference.sites import Sites, run_trace


def small_data(card):
    """A tiny dataset (the model's arguments), its observed site and a tiny config for each model family."""
    if card.family == "posteriordb":
        args = zoo.datasets.load(card.name).args
        return args, Sites.of(zoo.load(card.name).model, args).observed[0], {}
    if card.family in ("glm", "hierarchical"):
        x = torch.randn(24, 3)
        y = {"logistic-regression": torch.randint(0, 2, (24,)).float(),
             "poisson-regression": torch.poisson(torch.ones(24))}.get(card.name, torch.randn(24))
        return ((x, torch.arange(24) % 4, y) if card.family == "hierarchical" else (x, y)), "y", {}
    if card.family == "autoencoder":
        return (torch.bernoulli(torch.rand(24, 12)),), "x", dict(latent_dim=2, hidden=[4])
    y = torch.randint(0, 3, (24,)) if card.task == "classification" else torch.randn(24)
    if card.family == "bayesian-cnn":
        return (torch.rand(24, 1, 16, 16), y), "y", dict(channels=[2, 3], hidden=4)
    if card.family == "bayesian-rnn":
        x = torch.randint(1, 9, (24, 5)) if card.task == "classification" else torch.randn(24, 5, 2)
        return (x, y), "y", dict(hidden=4) if card.task == "regression" else dict(hidden=4, embed_dim=3)
    if card.family == "gaussian-process":
        return (torch.randn(24, 3), y), "y", {} if card.name == "gp-exact" else dict(num_inducing=5)
    return (torch.randn(24, 3), y), "y", dict(hidden=[4])


@pytest.mark.parametrize("name", zoo.list_models())
def test_card_schema(name):
    card = zoo.card(name)
    assert card.name == name and card.task in TASKS and card.family and card.likelihood
    assert set(card.backends) <= set(BACKENDS) and card.default_guide in card.guides
    assert all(reason for reason in card.refused.values())
    assert name in card.describe()


@pytest.mark.parametrize("name", zoo.list_models())
def test_every_guide_traces_against_its_model(name):
    card = zoo.card(name)
    args, observed, options = small_data(card)
    zm = zoo.load(name, data=args, **options)
    model_trace = run_trace(zm.model, args, zm.init_loc_fn)
    latent = {n for n, s in model_trace.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and n != "data"
              and not s["infer"].get("_deterministic")}
    assert model_trace.nodes[observed]["value"].shape[0] == args[-1].shape[0]
    for guide_name in card.guides:
        pyro.clear_param_store()
        guide_trace = poutine.trace(zm.make_guide(guide_name)).get_trace(*args)
        drawn = {n for n, s in guide_trace.nodes.items()
                 if s["type"] == "sample" and not s["infer"].get("is_auxiliary")}
        assert latent <= drawn, f"{guide_name} misses {latent - drawn}"
        for site in latent:
            assert guide_trace.nodes[site]["value"].shape == model_trace.nodes[site]["value"].shape


def test_load_records_config_that_rebuilds_the_model():
    zm = zoo.load("bnn", in_features=5, hidden=[7, 3])
    again = zoo.load("bnn", **zm.config)
    assert again.config == zm.config and zm.name == "bnn"


def test_register_bare_model_gets_every_backend():
    @zoo.register_model("test-bare", task="regression", likelihood="Normal")
    def build():
        def model(x, y=None):
            b = pyro.sample("b", pyro.distributions.Normal(0.0, 1.0))
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("y", pyro.distributions.Normal(b + 0 * x[:, 0], 1.0), obs=y)

        return model

    try:
        x, y = torch.randn(30, 1), torch.randn(30) + 2.0
        zm = zoo.load("test-bare")
        for backend, opts in [("svi", dict(num_steps=300, lr=0.05)), ("laplace", dict(num_steps=1000, lr=0.05)),
                              ("nuts", dict(num_warmup=50, num_chains=1))]:
            post = zoo.fit(zm, (x, y), backend, num_samples=100, seed=0, **opts)
            exact = y.sum() / (1 + 30)  # posterior mean of b under N(0, 1) prior, unit noise
            assert post.flat_samples()["b"].mean() == pytest.approx(float(exact), abs=0.1)
            assert set(post.evaluate((x, y))) == {"rmse", "test_ll"}
    finally:
        zoo.unregister_model("test-bare")


def test_duplicate_registration_is_refused():
    with pytest.raises(zoo.ZooError, match="already registered"):
        zoo.register_model("bnn")(lambda: None)
