"""zoo.bayesian and zoo.register_module: a plain torch network as a Bayesian model."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

import zoo


class Block(nn.Module):
    """A residual block with BatchNorm, as a ResNet has it."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.block = Block(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.block(self.stem(x)).mean((-2, -1)))


def layer_norm_mlp(width: int = 16):
    return nn.Sequential(nn.Linear(3, width), nn.LayerNorm(width), nn.Tanh(), nn.Dropout(0.1), nn.Linear(width, 1))


def images(n=96, seed=0):
    """Class 1 is bright in the top half, class 0 in the bottom half."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.rand(n, 1, 6, 6, generator=g) * 0.5
    x[y == 1, :, :3] += 0.5
    x[y == 0, :, 3:] += 0.5
    return x, y


def regression(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return x, torch.sin(x.sum(-1)) + 0.1 * torch.randn(n, generator=g)


def test_log_joint_equals_the_hand_written_bnn():
    """The module's model is the zoo's bnn written as a torch network: same priors, likelihood, density."""
    x, y = regression(20)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    module_model = zoo.bayesian(net, data=(x, y)).model
    bnn = zoo.load("bnn", in_features=3, hidden=[8], activation="tanh").model
    names = {"0.weight": "w0", "0.bias": "b0", "2.weight": "w1", "2.bias": "b1"}
    values = {name: torch.randn(p.shape) for name, p in net.named_parameters()}
    values["precision"] = torch.tensor(3.0)
    ours = poutine.trace(poutine.condition(module_model, values)).get_trace(x, y).log_prob_sum()
    theirs = poutine.trace(poutine.condition(bnn, {names.get(k, k): v for k, v in values.items()})).get_trace(x, y)
    assert ours.item() == pytest.approx(theirs.log_prob_sum().item(), rel=1e-5)
    assert torch.equal(dict(net.named_parameters())["0.weight"], net[0].weight)  # the user's net: not touched


def test_draws_at_once_equal_draws_one_by_one():
    x, _ = images(5)
    model = zoo.bayesian(TinyResNet().eval(), task="classification").model
    draws = {s.name: torch.randn(3, *s.shape) for s in model.sites}
    together = model.forward(x, draws)
    alone = torch.stack([model.forward(x, {k: v[i] for k, v in draws.items()}) for i in range(3)])
    assert together.shape == (3, 5, 2)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::zoo.ZooWarning", "ignore::zoo.DiagnosticWarning")
def test_layer_norm_mlp_learns_under_svi_and_laplace():
    x, y = regression()
    xt, yt = regression(64, seed=1)
    model = zoo.bayesian(layer_norm_mlp(8), data=(x, y))
    assert model.card.task == "regression" and "mc-dropout" in model.card.guides
    svi = zoo.fit(model, (x, y), num_steps=600, seed=0)
    laplace = zoo.fit(model, (x, y), backend="laplace", subset="all", optimizer="lbfgs", num_steps=300,
                      prior_rounds=1, seed=0)
    for post in (svi, laplace):
        assert post.evaluate((xt, yt))["rmse"] < 0.3, post.method  # the signal's sd is about 0.7
    # laplace holds the LayerNorm at its initial value; svi trains it
    assert torch.equal(laplace.params["net$$$1-weight"], torch.ones(8))
    assert not torch.equal(svi.params["net$$$1-weight"], torch.ones(8))


def test_nuts_on_a_linear_module_finds_least_squares():
    """200 points with noise 0.1: the posterior of the weights sits at the least-squares fit, within 0.01."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=g)
    y = x @ torch.tensor([1.5, -0.5]) + 0.3 + 0.1 * torch.randn(200, generator=g)
    post = zoo.fit(zoo.bayesian(nn.Linear(2, 1), data=(x, y)), (x, y), backend="nuts", num_samples=200,
                   num_warmup=200, num_chains=2, seed=0)
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(200, 1)], 1), y.unsqueeze(-1)).solution.squeeze()
    mean = torch.cat([post.samples["weight"].mean((0, 1)).reshape(-1), post.samples["bias"].mean((0, 1))])
    torch.testing.assert_close(mean, solution, atol=0.01, rtol=0)


def test_batch_norm_resnet_trains_with_svi_and_keeps_its_statistics(tmp_path):
    x, y = images()
    xt, yt = images(64, seed=1)
    zoo.register_module("test-resnet", TinyResNet)
    try:
        model = zoo.load("test-resnet", data=(x, y), channels=4)
        post = zoo.fit(model, (x, y), num_steps=150, batch_size=32, seed=0)
        assert post.evaluate((xt, yt))["accuracy"] > 0.9
        running = post.params["net$$$stem-1-running_mean"]
        assert running.abs().max() > 0.01  # the statistics moved from their start (0)
        pyro.set_rng_seed(3)
        before = post.predict(xt).probs
        loaded = zoo.load_posterior(post.save(tmp_path / "resnet"))
        assert loaded.model.card.task == "classification"
        torch.testing.assert_close(loaded.params["net$$$stem-1-running_mean"], running)
        pyro.set_rng_seed(3)
        torch.testing.assert_close(loaded.predict(xt).probs, before)
        with pytest.raises(zoo.ZooError, match="train mode and has BatchNorm.*module.eval"):
            zoo.fit(model, (x, y), backend="laplace")
    finally:
        zoo.unregister_model("test-resnet")


def test_eval_mode_resnet_gets_last_layer_laplace():
    x, y = images(48)
    model = zoo.bayesian(TinyResNet().eval(), data=(x, y), sites=["block.conv2", "fc"])
    assert [s.name for s in model.model.sites] == ["block.conv2.weight", "fc.weight", "fc.bias"]
    assert model.last_layer == ["fc.weight", "fc.bias"]
    post = zoo.fit(model, (x, y), backend="laplace", subset="last-layer", num_steps=200, prior_rounds=1, seed=0)
    assert post.info["subset"] == "last-layer" and post.info["num_parameters"] == 4 * 2 + 2
    # KFAC finds the convolution and the linear layer as functional_call runs them
    kron = zoo.fit(model, (x, y), backend="laplace", hessian="kron", num_steps=200, prior_rounds=1, seed=0)
    assert kron.info["hessian"] == "kron" and kron.info["num_parameters"] == 4 * 4 * 9 + 4 * 2 + 2


def test_recurrent_module_with_mc_dropout():
    class Reader(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.drop, self.out = nn.LSTM(1, 6, batch_first=True), nn.Dropout(0.25), nn.Linear(6, 2)

        def forward(self, x):
            return self.out(self.drop(self.lstm(x.unsqueeze(-1))[0][:, -1]))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 5, generator=g)
    y = (x.sum(-1) > 0).long()
    post = zoo.fit(zoo.bayesian(Reader(), data=(x, y)), (x, y), guide="mc-dropout", num_steps=300, seed=0,
                   num_samples=20)
    probs = post.predict(x[:8]).draw_probs
    assert probs.shape == (20, 8, 2) and probs.std(0).max() > 1e-3  # the masks vary the network per draw
    assert post.evaluate((x, y))["accuracy"] > 0.85


@pytest.mark.parametrize("module, options, message", [
    ("not a module", {}, "must be a torch.nn.Module"),
    (nn.Sequential(nn.ReLU()), {"task": "regression"}, "no trainable weights"),
    (nn.Linear(3, 1), {"task": "regression", "sites": ["fc"]}, "neither a layer nor a parameter"),
    (nn.Linear(3, 1), {}, "give data="),
    (nn.Linear(3, 2), {"data": regression(8)}, "needs 1 output"),
    (nn.Linear(4, 1), {"data": regression(8)}, "could not run on x of shape"),
    (nn.Linear(3, 1), {"task": "regression", "prior_scale": 0}, "prior_scale must be a positive"),
])
def test_bad_input_is_a_clear_error(module, options, message):
    with pytest.raises(zoo.ZooError, match=message):
        zoo.bayesian(module, **options)


def test_labels_outside_the_output_layer_are_refused():
    x, y = images(8)
    model = zoo.bayesian(TinyResNet(classes=2).eval(), task="classification")
    with pytest.raises(zoo.ZooError, match="labels must lie in"):
        zoo.fit(model, (x, y + 5), num_steps=1)
    pyro.clear_param_store()
