"""Autoencoders: IWAE bounds against closed forms, the sparse AE's loss, corruption, the posterior's API."""

import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import zoo
from zoo._noise import per_example_noise
from zoo.models.corruption import corruption, gaussian, masking, salt_and_pepper


@pytest.fixture(scope="module")
def binary():
    torch.manual_seed(0)  # two latent factors behind 12 binary pixels
    return torch.bernoulli(torch.sigmoid(torch.randn(300, 2) @ (3 * torch.randn(2, 12))))


@pytest.fixture(scope="module")
def fitted_vae(binary):
    zm = zoo.load("vae", data=(binary,), latent_dim=2, hidden=[16])
    return zoo.fit(zm, binary, num_epochs=20, batch_size=50, lr=1e-2, seed=0, progress=False)


def test_iwae_is_above_the_elbo_and_grows_with_k(fitted_vae, binary):
    torch.manual_seed(1)
    scores = {k: fitted_vae.evaluate(binary, iwae_samples=k) for k in (1, 10, 100, 1000)}
    assert scores[1]["log_likelihood"] == pytest.approx(scores[1]["elbo"], abs=1e-5)
    for k, s in scores.items():
        assert s["log_likelihood"] >= s["elbo"], k
    bounds = [scores[k]["log_likelihood"] for k in (1, 10, 100, 1000)]
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False)), bounds
    # the ELBO's estimate does not depend on k beyond Monte Carlo noise
    assert scores[1000]["elbo"] == pytest.approx(scores[100]["elbo"], abs=0.1)


@pytest.mark.parametrize("name, flows", [("vae", {}), ("vae-iaf", dict(num_flows=2, flow_hidden=16))])
def test_iwae_of_linear_gaussian_vae_reaches_the_exact_marginal(name, flows):
    """Probabilistic PCA: z ~ N(0, I), x ~ N(Wz + b, s^2 I), so p(x) = N(b, W W^T + s^2 I) in closed form;
    for vae-iaf the estimate runs through the flows' log-determinants."""
    torch.manual_seed(0)
    w_true = torch.randn(5, 2)
    x = torch.randn(400, 2) @ w_true.T + 0.3 * torch.randn(400, 5) + 1.0
    zm = zoo.load(name, data=(x,), latent_dim=2, hidden=[32], likelihood="gaussian", sigma=0.3, decoder_hidden=[],
                  **flows)
    post = zoo.fit(zm, x, num_epochs=150, batch_size=100, lr=1e-2, seed=0, progress=False)
    linear = post.net.decoder.net[0]
    cov = linear.weight @ linear.weight.T + 0.3**2 * torch.eye(5)
    exact = torch.distributions.MultivariateNormal(linear.bias, cov).log_prob(x).detach()
    iwae = post.log_likelihood(x, iwae_samples=2000)
    elbo = post.evaluate(x, iwae_samples=1)["elbo"]
    assert float((iwae - exact).abs().mean()) < 0.02
    assert float(exact.mean()) - elbo > 4 * abs(float((iwae - exact).mean()))  # the ELBO's gap is far wider


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu", "gelu"])
def test_contractive_penalty_is_the_encoders_jacobian_norm(activation):
    torch.manual_seed(0)
    x = torch.rand(20, 6)
    for hidden in ([5], [5, 4]):
        model = zoo.load("contractive-ae", data=(x,), latent_dim=3, hidden=hidden, activation=activation)
        encoder = model.network.encoder
        jacobians = torch.func.vmap(torch.func.jacrev(lambda v: encoder.loc(encoder.trunk(v))))(x)
        exact = jacobians.pow(2).sum((1, 2)).detach()
        if len(hidden) == 1:  # the closed form
            assert torch.allclose(encoder.contraction(x), exact, rtol=1e-4, atol=1e-6)
        else:  # Hutchinson's estimate is unbiased
            estimate = torch.stack([encoder.contraction(x) for _ in range(4000)]).mean(0).detach()
            assert torch.allclose(estimate, exact, rtol=0.1)


def test_contractive_loss_adds_the_penalty_only_while_fitting():
    torch.manual_seed(0)
    x = torch.rand(20, 6)
    zm, plain = (zoo.load("contractive-ae", data=(x,), latent_dim=3, hidden=[5], lam=lam) for lam in (0.7, 0.0))
    plain.network.load_state_dict(zm.network.state_dict())
    losses = {}
    for name, model in (("cae", zm), ("plain", plain)):
        pyro.clear_param_store()
        losses[name] = Trace_ELBO().loss(model.model, model.make_guide("delta"), x)
        with per_example_noise():
            losses[name + " fitting"] = Trace_ELBO().loss(model.model, model.make_guide("delta"), x)
    with torch.no_grad():
        penalty = 0.7 * float(zm.network.encoder.contraction(x).sum())
    assert losses["cae"] == pytest.approx(losses["plain"]) == pytest.approx(losses["plain fitting"])
    assert losses["cae fitting"] - losses["plain"] == pytest.approx(penalty, abs=1e-4)


def test_contractive_fit_shrinks_the_jacobian():
    torch.manual_seed(0)
    x = torch.rand(300, 20)
    norms = {}
    for lam in (0.0, 1.0):
        post = zoo.fit(zoo.load("contractive-ae", data=(x,), latent_dim=5, hidden=[16], lam=lam), x, num_steps=300,
                       batch_size=100, lr=1e-2, seed=0, progress=False)
        with torch.no_grad():
            norms[lam] = float(post.net.encoder.contraction(x).mean())
    assert norms[1.0] < 0.1 * norms[0.0]
    with pytest.raises(zoo.ZooError, match="lam"):
        zoo.load("contractive-ae", input_shape=[4], lam=-1.0)


def test_delta_sparse_ae_loss_is_squared_error_plus_l1():
    torch.manual_seed(0)
    x = torch.rand(20, 6)
    lam = 0.7
    zm = zoo.load("sparse-ae", data=(x,), latent_dim=3, hidden=[5], lam=lam)
    pyro.clear_param_store()
    loss = Trace_ELBO().loss(zm.model, zm.make_guide("delta"), x)
    ae = zm.network
    with torch.no_grad():
        h = ae.encoder.loc(ae.encoder.trunk(x))
        squared_error = (ae.decoder.net(h) - x).pow(2).sum()
    n, d, k = x.shape[0], x.shape[1], h.shape[1]
    # -log N(x | f, 1/2) = (x - f)^2 + log(pi) / 2 per entry; -log Laplace(h | 0, 1/lam) = lam |h| - log(lam / 2)
    constants = n * (d * math.log(math.pi) / 2 - k * math.log(lam / 2))
    assert loss - constants == pytest.approx(float(squared_error + lam * h.abs().sum()), rel=1e-5)


def test_corruption_functions():
    torch.manual_seed(0)
    x = torch.full((400, 100), 0.5)
    masked = masking(x, 0.3)
    assert torch.equal((masked == 0).sum(1), torch.full((400,), 30))
    images = masking(torch.ones(50, 1, 10, 10), 0.3)  # counted over the whole image, not per pixel row
    assert torch.equal((images == 0).flatten(1).sum(1), torch.full((50,), 30))
    assert (images == 0).sum(-1).max() > 3
    salted = salt_and_pepper(x, 0.2)
    changed = salted != 0.5
    assert torch.equal(changed.sum(1), torch.full((400,), 20))
    assert set(salted[changed].unique().tolist()) == {0.0, 1.0}
    assert float(salted[changed].mean()) == pytest.approx(0.5, abs=0.02)
    noisy = gaussian(x, 0.1)
    assert float((noisy - x).std()) == pytest.approx(0.1, rel=0.02)
    assert corruption("none", 0.0) is None
    with pytest.raises(zoo.ZooError, match="fraction"):
        corruption("masking", 1.5)
    with pytest.raises(zoo.ZooError, match="one of"):
        corruption("blur", 0.1)


def test_denoising_guide_corrupts_only_while_fitting():
    x = torch.rand(8, 10)
    zm = zoo.load("denoising-ae", data=(x,), latent_dim=3, hidden=[6], corruption="masking", level=0.5)
    guide = zm.make_guide("delta")
    clean = [guide(x) for _ in range(2)]
    assert torch.equal(clean[0], clean[1])
    with per_example_noise():
        noisy = guide(x)
    assert not torch.allclose(noisy, clean[0])


def test_dynamic_binarization_shows_guide_and_model_one_fresh_draw_per_step():
    x = torch.full((6, 10), 0.5)
    zm = zoo.load("vae", data=(x,), latent_dim=2, hidden=[8], dynamic_binarization=True)
    seen = []
    zm.network.encoder.trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    guide = zm.make_guide("normal")
    steps = []
    for _ in range(2):
        with per_example_noise():
            guide_trace = pyro.poutine.trace(guide).get_trace(x)
            model_trace = pyro.poutine.trace(pyro.poutine.replay(zm.model, trace=guide_trace)).get_trace(x)
        scored = model_trace.nodes["x"]["value"]
        assert torch.equal(seen[-1], scored)  # the encoder read the pixels the likelihood scored
        assert bool(((scored == 0) | (scored == 1)).all())
        steps.append(scored)
    assert not torch.equal(steps[0], steps[1])  # a new draw every step


def test_dynamic_binarization_learns_the_grey_levels():
    """Pixels of fixed intensity carry no code: the decoder's Bernoulli probabilities must reach the
    intensities themselves."""
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9, 0.2])
    x = levels.expand(200, -1).clone()
    zm = zoo.load("vae", data=(x,), latent_dim=1, hidden=[4], dynamic_binarization=True)
    post = zoo.fit(zm, x, num_epochs=60, batch_size=50, lr=2e-2, seed=0, progress=False)
    decoded = torch.sigmoid(post.net.decoder.net(torch.zeros(1, 1))).detach().reshape(-1)
    assert torch.allclose(decoded, levels, atol=0.05), decoded
    binary = torch.bernoulli(x, generator=torch.Generator().manual_seed(0))
    assert math.isfinite(post.evaluate(binary, iwae_samples=10)["log_likelihood"])
    with pytest.raises(zoo.ZooError, match="scores binary pixels only"):
        post.evaluate(x, iwae_samples=10)
    with pytest.raises(zoo.ZooError, match="dynamic_binarization=True"):
        zoo.fit(zoo.load("vae", data=(x,), latent_dim=1), x, num_epochs=1, progress=False)
    with pytest.raises(zoo.ZooError, match="not 'gaussian'"):
        zoo.load("vae", data=(x,), likelihood="gaussian", dynamic_binarization=True)


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_every_likelihood_learns(likelihood, binary):
    x = binary if likelihood == "bernoulli" else binary * 0.6 + 0.2
    zm = zoo.load("vae", data=(x,), latent_dim=2, hidden=[8], likelihood=likelihood)
    post = zoo.fit(zm, x, num_epochs=40, batch_size=50, lr=1e-2, seed=0, progress=False)
    first, last = sum(post.loss[:6]) / 6, sum(post.loss[-6:]) / 6
    assert last < first - 1.0
    assert -last == pytest.approx(post.evaluate(x, iwae_samples=1)["elbo"], abs=1.0)


def test_posterior_shapes_and_arviz_groups():
    data = zoo.datasets.load("mnist-mini", binarize=True, fraction=0.1)
    zm = zoo.load("vae", data=data, latent_dim=3, hidden=[20])
    post = zoo.fit(zm, data.train, num_epochs=1, seed=0, progress=False)
    x = data.test.x[:7]
    assert x.shape == (7, 1, 28, 28)
    assert post.encode(x).shape == (7, 3) and post.latents(x, 5).shape == (5, 7, 3)
    assert post.reconstruct(x).shape == x.shape and post.generate(4, seed=0).shape == (4, 1, 28, 28)
    assert torch.equal(post.generate(4, seed=0), post.generate(4, seed=0))
    idata = post.to_arviz(x, num_samples=5, iwae_samples=10)
    assert idata.posterior["z"].dims == ("chain", "draw", "obs", "latent")
    assert idata.posterior["z"].shape == (1, 5, 7, 3)
    assert idata.log_likelihood["x"].shape == (1, 1, 7)
    assert idata.posterior_predictive["x"].shape == (1, 5, 7, 784)
    assert idata.sample_stats["loss"].shape == (len(post.loss),)


def test_save_load_round_trip_and_seeded_refit(fitted_vae, binary, tmp_path):
    again = zoo.load_posterior(fitted_vae.save(tmp_path / "vae"))
    assert torch.equal(again.reconstruct(binary[:5]), fitted_vae.reconstruct(binary[:5]))
    assert again.sites.local == {"z": (2,)}
    iaf = zoo.fit(zoo.load("vae-iaf", data=(binary,), latent_dim=3, hidden=[8], flow_hidden=6), binary,
                  num_steps=20, seed=0, progress=False)
    torch.manual_seed(123)  # the flows' variable order must not depend on the random state at load time
    again = zoo.load_posterior(iaf.save(tmp_path / "iaf"))
    assert torch.equal(again.encode(binary[:5]), iaf.encode(binary[:5]))
    refit = zoo.fit(fitted_vae.model, binary, num_epochs=20, batch_size=50, lr=1e-2, seed=0, progress=False)
    assert torch.equal(refit.encode(binary[:5]), fitted_vae.encode(binary[:5]))


def test_bad_input_gets_clear_errors(fitted_vae, binary):
    with pytest.raises(zoo.ZooError, match=r"\[0, 1\]"):
        fitted_vae.evaluate(binary[:3] * 2)
    with pytest.raises(zoo.ZooError, match="binary pixels"):
        fitted_vae.log_likelihood(binary[:3] * 0.5)
    assert fitted_vae.encode(binary[:3] * 0.5).shape == (3, 2)  # an encoder reads any input of the right shape
    with pytest.raises(zoo.ZooError, match="binary pixels"):
        zoo.fit(zoo.load("vae", input_shape=[12]), binary * 0.5)
    with pytest.raises(zoo.ZooError, match=r"shape \(points, 1, 28, 28\)"):
        zoo.fit(zoo.load("vae", input_shape=[1, 28, 28]), binary)
    with pytest.raises(zoo.ZooError, match="shape"):
        fitted_vae.reconstruct(torch.zeros(3, 10))
    for backend in ("nuts", "laplace"):
        with pytest.raises(zoo.ZooError, match="amortised encoder"):
            zoo.fit(fitted_vae.model, binary, backend)
    with pytest.raises(zoo.ZooError, match="iwae_samples"):
        fitted_vae.evaluate(binary, iwae_samples=0)
    with pytest.raises(zoo.ZooError, match="positive integer"):
        fitted_vae.generate(0)
    with pytest.raises(zoo.ZooError, match="reconstruct"):
        fitted_vae.predict(binary)
    with pytest.raises(zoo.ZooError, match="lam"):
        zoo.load("sparse-ae", input_shape=[4], lam=0.0)
    with pytest.raises(zoo.ZooError, match="likelihood"):
        zoo.load("vae", input_shape=[4], likelihood="poisson")


def test_delta_guide_has_no_importance_weighted_likelihood():
    x = torch.rand(30, 6)
    post = zoo.fit(zoo.load("sparse-ae", data=(x,), latent_dim=3, hidden=[5]), x, num_steps=5, progress=False)
    assert set(post.evaluate(x)) == {"elbo", "reconstruction_mse"}
    with pytest.raises(zoo.ZooError, match="no density"):
        post.log_likelihood(x)
