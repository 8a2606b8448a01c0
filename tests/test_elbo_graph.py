"""The SVI step as a traced graph: its loss and gradients are Pyro's at the same random numbers, it trains as
Pyro's step does, and a model it cannot reproduce keeps Pyro's step."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import zoo
from zoo._errors import ZooWarning
from zoo.inference.elbo_graph import ElboStep, trace_elbo_step


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3 * torch.randn(50, generator=gen)


def test_the_graph_gives_trace_elbos_loss_and_gradients(data):
    pyro.clear_param_store()
    guide, elbo = AutoNormal(regression), Trace_ELBO()
    elbo.loss(regression, guide, *data)  # creates the parameters
    store = pyro.get_param_store()
    names = sorted(store.keys())
    step = trace_elbo_step(elbo, regression, guide, names, data, owners=(guide,))
    assert step is not None
    with torch.no_grad():  # away from the initial point, where every gradient is its own
        for name in names:
            store._params[name].add_(0.1 * torch.randn_like(store._params[name]))
    params = [store._params[name] for name in names]
    for seed in (3, 4):
        torch.manual_seed(seed)
        loss, finite, grads = step([p.detach() for p in params], data)
        assert bool(finite)
        torch.manual_seed(seed)
        want = elbo.loss_and_grads(regression, guide, *data)
        assert float(loss) == pytest.approx(want, rel=1e-5)
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
            p.grad = None
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_a_bnn_trains_the_same_through_the_graph(monkeypatch):
    data = zoo.datasets.load("boston", split=0)
    model = zoo.load("bnn", data=data, hidden=[10])
    graph = zoo.fit(model, data.train, "svi", num_steps=500, batch_size=64, seed=0)
    monkeypatch.setattr("zoo.inference.svi.trace_elbo_step", lambda *args, **kwargs: None)
    pyro_step = zoo.fit(model, data.train, "svi", num_steps=500, batch_size=64, seed=0)
    assert (graph.info["elbo_step"], pyro_step.info["elbo_step"]) == ("traced", "pyro")
    assert graph.loss[0] == pytest.approx(pyro_step.loss[0], rel=1e-4)  # the same first step
    assert graph.evaluate(data.test)["rmse"] == pytest.approx(pyro_step.evaluate(data.test)["rmse"], rel=0.1)


def test_a_guide_with_a_discrete_site_keeps_pyros_step():
    def mixture(y):
        weight = pyro.sample("weight", dist.Beta(1.0, 1.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(weight))
            pyro.sample("y", dist.Normal(3.0 * z, 1.0), obs=y)

    def guide(y):
        a = pyro.param("a", torch.tensor(1.0), constraint=dist.constraints.positive)
        pyro.sample("weight", dist.Beta(a, 1.0))
        p = pyro.param("p", torch.full(y.shape, 0.5), constraint=dist.constraints.unit_interval)
        with pyro.plate("data", y.shape[0]):
            pyro.sample("z", dist.Bernoulli(p))

    pyro.clear_param_store()
    y = torch.tensor([0.1, 2.9, 3.2, -0.4])
    elbo = Trace_ELBO()
    elbo.loss(mixture, guide, y)
    # a score-function site (its surrogate loss is not the loss): not traced
    assert trace_elbo_step(elbo, mixture, guide, ["a", "p"], (y,)) is None


def test_the_compiled_step_trains_as_the_traced_one(data):
    """Inductor with eager random numbers: the same draws, so the same fit up to rounding."""
    fits = {step: zoo.fit(regression, data, "svi", num_steps=300, elbo_step=step, seed=0, progress=False)
            for step in ("traced", "compiled")}
    assert {step: post.info["elbo_step"] for step, post in fits.items()} == {"traced": "traced", "compiled": "compiled"}
    assert fits["compiled"].loss == pytest.approx(fits["traced"].loss, rel=1e-4)
    for name, value in fits["traced"].params.items():
        torch.testing.assert_close(fits["compiled"].params[name], value, rtol=1e-3, atol=1e-4)


def test_compiling_is_chosen_where_it_pays():
    step = ElboStep(graph=None, tensor_at=(), num_ops=600)  # 7.2 s to compile, 2.1 ms of replay saved per step
    assert step.worth_compiling(seconds_per_step=2.5e-3, steps_left=5000)
    assert not step.worth_compiling(seconds_per_step=2.5e-3, steps_left=2000)
    # a step whose time is arithmetic, not replay, saves only the replay
    assert not step.worth_compiling(seconds_per_step=1.0, steps_left=3000)


def test_a_step_asked_for_but_not_traceable_says_so_and_runs_pyros(data):
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        if w.detach()[0] > 0:  # control flow on a latent's value: a trace would freeze one branch
            w = w * 1.0
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, 0.3), obs=y)

    def guide(x, y=None):
        loc = pyro.param("loc", torch.zeros(x.shape[1]))
        pyro.sample("w", dist.Normal(loc, 0.1).to_event(1))

    with pytest.warns(ZooWarning, match="elbo_step='traced' was asked for"):
        post = zoo.fit(zoo.ZooModel(model, guide), data, "svi", num_steps=20, elbo_step="traced", seed=0,
                       progress=False)
    assert post.info["elbo_step"] == "pyro"


def test_jit_and_a_traced_step_are_refused_together(data):
    with pytest.raises(zoo.ZooError, match="jit=True"):
        zoo.fit(regression, data, "svi", num_steps=10, jit=True, elbo_step="compiled", progress=False)
    with pytest.raises(zoo.ZooError, match="elbo_step must be one of"):
        zoo.fit(regression, data, "svi", num_steps=10, elbo_step="fast", progress=False)


def test_pyro_tutorials_module_with_priors_built_at_init_is_traced(data):
    """Pyro's Bayesian-regression tutorial model: its PyroSample priors are made in __init__, with validation
    on, so they check each value's support (a read a trace cannot follow) unless tracing turns that off."""
    from pyro.nn import PyroModule, PyroSample

    class BayesianRegression(PyroModule):
        def __init__(self, in_features):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](in_features, 1)
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            sigma = pyro.sample("sigma", dist.Uniform(0.0, 10.0))
            mean = self.linear(x).squeeze(-1)
            with pyro.plate("data", x.shape[0]):
                pyro.sample("obs", dist.Normal(mean, sigma), obs=y)
            return mean

    model = BayesianRegression(data[0].shape[1])
    svi = zoo.fit(zoo.ZooModel(model, AutoNormal(model)), data, "svi", num_steps=50, elbo_step="traced", seed=0,
                  progress=False)
    nuts = zoo.fit(model, data, "nuts", num_chains=2, num_warmup=5, num_samples=5, seed=0, progress=False)
    assert (svi.info["elbo_step"], nuts.info["density"]) == ("traced", "traced")
