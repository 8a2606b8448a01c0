"""Laplace's structures (kron, lowrank, blocks) against the dense matrices they stand for, KFAC's factors against
exact ones and against curvlinops, and the per-site prior and the noise precision against the exact evidence of
linear-Gaussian models."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import init_to_sample

import zoo
from zoo.inference._base import Problem
from zoo.inference.curvature import LaplaceTerms
from zoo.inference.kfac import capture_layers
from zoo.inference.precisions import Blocks, Dense, Diagonal, Kronecker, LowRank, nystrom
from zoo.inference.sites import Sites
from zoo.models.posteriordb import flat

SIGMA = 0.5


def _spd(n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


def _dense_of(structure, alpha):
    """The precision a structure stands for, built column by column from its log density's Hessian."""
    x = torch.zeros(structure.size, dtype=torch.float64, requires_grad=True)
    return -torch.autograd.functional.hessian(lambda v: structure.log_density(v.unsqueeze(0), alpha).sum(), x)


@pytest.mark.parametrize("kind", ["dense", "diag", "kron", "lowrank", "blocks"])
def test_each_structure_is_the_gaussian_of_its_precision(kind):
    torch.manual_seed(0)
    d = torch.rand(6, dtype=torch.float64) + 0.5
    alpha = torch.full((6,), 0.7, dtype=torch.float64)
    a, g = _spd(3, 1), _spd(2, 2)
    u = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    s, e = torch.tensor([5.0, 2.0], dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    if kind == "kron":
        d = torch.full((6,), 1.3, dtype=torch.float64)
    structure, matrix = {
        "dense": lambda: (Dense(_spd(6, 3), d), _spd(6, 3) + torch.diag(alpha * d)),
        "diag": lambda: (Diagonal(torch.rand(6, dtype=torch.float64), d), None),
        "kron": lambda: (Kronecker(a, g, d), torch.kron(a, g) + torch.diag(alpha * d)),
        "lowrank": lambda: (LowRank(u, s, e, d), u @ torch.diag(s) @ u.T + torch.diag(alpha * d + e)),
        "blocks": lambda: (Blocks([(torch.tensor([0, 2, 4]), Dense(_spd(3, 4), d[[0, 2, 4]])),
                                   (torch.tensor([1, 3, 5]), Diagonal(torch.ones(3, dtype=torch.float64),
                                                                      d[[1, 3, 5]]))], 6), None),
    }[kind]()
    if matrix is None:
        matrix = _dense_of(structure, alpha)
    torch.testing.assert_close(_dense_of(structure, alpha), matrix)
    assert structure.logdet(alpha) == pytest.approx(float(torch.linalg.slogdet(matrix)[1]), rel=1e-9)
    covariance = torch.linalg.inv(matrix)
    torch.testing.assert_close(structure.variances(alpha), covariance.diagonal())
    root = structure.root(alpha)
    torch.testing.assert_close(root @ root.T, covariance)
    draws = structure.sample(200_000, alpha)
    torch.testing.assert_close(torch.cov(draws.T), covariance, atol=0.02 * float(covariance.abs().max()), rtol=0)


def test_nystrom_recovers_the_top_eigenpairs_of_a_low_rank_matrix():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(50, 5, dtype=torch.float64))[0]
    values = torch.tensor([9.0, 5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    h = basis @ torch.diag(values) @ basis.T
    probes = torch.linalg.qr(torch.randn(50, 8, dtype=torch.float64))[0]
    u, s = nystrom(h @ probes, probes, 5)
    torch.testing.assert_close(s, values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u @ torch.diag(s) @ u.T, h, rtol=0, atol=1e-5)


def _linear_data(n=200, d_in=3, d_out=2):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    return x, x @ torch.randn(d_in, d_out, generator=g) + SIGMA * torch.randn(n, d_out, generator=g)


def _linear(x, y=None):  # y ~ N(x W^T + b, sigma^2): its Fisher is exactly Kronecker, (x^T x) (x) I / sigma^2
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2, x.shape[1]]).to_event(2))
    b = pyro.sample("b", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with pyro.plate("data", x.shape[0]) as idx:
        f = pyro.deterministic("f", F.linear(x[idx], w, b), event_dim=1)
        return pyro.sample("y", dist.Normal(f, SIGMA).to_event(1), obs=None if y is None else y[idx])


def _terms(model, data):
    args = tuple(data)
    sites = Sites.of(model, args)
    return LaplaceTerms(Problem(model, args, sites, 10, False, init_to_sample))


def test_kfac_factors_are_the_exact_kronecker_factors_of_a_one_layer_net():
    x, y = _linear_data()
    joint = _terms(_linear, (x, y))
    torch.manual_seed(0)
    capture = capture_layers(joint, joint.initial, ["w", "b"], 400, joint.blocks(64))
    assert not capture.unmatched
    (layer,) = capture.layers  # linear(x, W, b): W (out, in) and b in one block, G (x) A with inputs [x, 1]
    g, a = layer.factors
    inputs = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    torch.testing.assert_close(a, inputs.T @ inputs / len(x), rtol=1e-6, atol=1e-8)
    expected_g = len(x) / SIGMA**2 * torch.eye(2, dtype=torch.float64)  # E[g g^T] summed over points
    torch.testing.assert_close(g, expected_g, rtol=0, atol=0.05 * expected_g[0, 0])
    assert layer.order.tolist() == [0, 1, 2, 6, 3, 4, 5, 7] and layer.rows == len(x)  # w row by row, then b


@pytest.mark.parametrize("hessian", ["kron", "lowrank"])
def test_kron_and_lowrank_laplace_give_the_exact_posterior_of_a_linear_model(hessian):
    # one layer: its Fisher is exactly Kronecker; lowrank at full rank is the dense Fisher
    x, y = _linear_data()
    post = zoo.fit(_linear, (x, y), "laplace", hessian=hessian, fisher_samples=200, rank=8, tune_prior=False,
                   num_samples=20_000, seed=0)
    draws = torch.cat([post.flat_samples()[s].reshape(20_000, -1) for s in ("w", "b")], -1).double()
    design = torch.cat([torch.kron(torch.eye(2), x.double()), torch.kron(torch.eye(2), torch.ones(len(x), 1))], 1)
    exact = design.T @ design / SIGMA**2 + torch.eye(8, dtype=torch.float64)  # weights first, then the bias
    torch.testing.assert_close(torch.linalg.inv(torch.cov(draws.T)), exact, rtol=0,
                               atol=0.06 * float(exact.abs().max()))


def test_kfac_finds_convolutions_and_leaves_other_uses_to_the_rest():
    def cnn(x, y=None):
        k = pyro.sample("k", dist.Normal(0.0, 1.0).expand([3, 1, 3, 3]).to_event(4))
        c = pyro.sample("c", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([3 * 4 * 4, 2]).to_event(2))
        gain = pyro.sample("gain", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]) as idx:
            h = torch.relu(F.conv2d(x[idx], k, c, padding=1))
            logits = pyro.deterministic("logits", F.max_pool2d(h, 2).flatten(1) @ w * gain, event_dim=1)
            return pyro.sample("y", dist.Categorical(logits=logits), obs=None if y is None else y[idx])

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 2, (40,), generator=g)
    joint = _terms(cnn, (x, y))
    capture = capture_layers(joint, joint.initial, ["k", "c", "w", "gain"], 2, [None])
    assert capture.unmatched == {"gain"}  # an elementwise scale, not a layer
    kernel, dense = capture.layers  # the kernel with its bias c; w alone (no bias is added to its product)
    g_factor, a_factor = kernel.factors
    assert g_factor.shape == (3, 3) and a_factor.shape == (10, 10) and kernel.rows == 40 * 8 * 8
    patches = torch.cat([F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9), torch.ones(40 * 64, 1)], 1)
    exact = (patches.T @ patches / len(patches)).double()
    torch.testing.assert_close(a_factor, exact, rtol=1e-5, atol=1e-6)  # float32 sums, in any order
    assert sorted(kernel.order.tolist()) == list(range(30)) and dense.order.tolist() == list(range(30, 126))
    post = zoo.fit(cnn, (x, y), "laplace", hessian="kron", num_samples=50, num_steps=2000, seed=0)
    assert post.flat_samples()["gain"].std(0).min() > 0  # the rest block still gives it a spread


def test_kfac_matches_curvlinops_on_a_two_layer_network():
    curvlinops = pytest.importorskip("curvlinops")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=g)
    y = torch.sin(x.sum(-1, keepdim=True)) + 0.1 * torch.randn(100, 1, generator=g)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def mlp(x, y=None):  # the same network as a Pyro model; noise 1/sqrt(2): the Gaussian NLL is MSELoss(sum)
        w = [pyro.sample(f"w{i}", dist.Normal(0.0, 1.0).expand(list(p.shape)).to_event(p.dim()))
             for i, p in enumerate(net.parameters())]
        with pyro.plate("data", x.shape[0]) as idx:
            f = F.linear(torch.tanh(F.linear(x[idx], w[0], w[1])), w[2], w[3])
            return pyro.sample("y", dist.Normal(f, 0.5**0.5).to_event(1), obs=None if y is None else y[idx])

    joint = _terms(mlp, (x, y))
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).to(joint.initial.dtype)
    torch.manual_seed(0)
    zoo_layers = capture_layers(joint, theta, ["w0", "w1", "w2", "w3"], 2000, [None]).layers
    reference = curvlinops.KFACLinearOperator(net, torch.nn.MSELoss(reduction="sum"), list(net.parameters()),
                                             [(x, y)], fisher_type="type-2", separate_weight_and_bias=False,
                                             check_deterministic=False)
    reference.compute_kronecker_factors()
    for (name, a_ref), layer in zip(reference._input_covariances.items(), zoo_layers, strict=True):
        g_ref = reference._gradient_covariances[name]  # modules "0" and "2": sites w0, w1 and w2, w3
        g_zoo, a_zoo = layer.factors
        torch.testing.assert_close(a_zoo, a_ref.double(), rtol=1e-5, atol=1e-6)
        assert float((g_zoo - g_ref.double()).norm() / g_ref.norm()) < 0.05


def _argmin(loss_of) -> torch.Tensor:
    """The minimiser of ``loss_of`` over two log-hyperparameters, by L-BFGS from zero."""
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    optim = torch.optim.LBFGS([x], max_iter=200, line_search_fn="strong_wolfe")
    optim.step(lambda: (optim.zero_grad(), (loss := loss_of(x)).backward(), loss)[-1])
    return x.detach()


def test_the_per_site_prior_is_the_exact_evidence_optimum_of_a_linear_gaussian_model():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(80, 3, generator=g), torch.randn(80, 3, generator=g)
    noise = 0.3 * torch.randn(80, generator=g)
    y = x1 @ torch.tensor([3.0, -4.0, 5.0]) + x2 @ torch.tensor([0.05, -0.02, 0.03]) + noise

    def two_groups(x1, x2, y=None):
        big = pyro.sample("big", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        small = pyro.sample("small", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with pyro.plate("data", x1.shape[0]):
            return pyro.sample("y", dist.Normal(x1 @ big + x2 @ small, 0.3), obs=y)

    post = zoo.fit(two_groups, (x1, x2, y), "laplace", prior_per_site=True, prior_rounds=16, num_samples=10, seed=0)
    scales = post.info["prior_precision_scale"]

    def neg_exact_log_evidence(log_alpha):  # y ~ N(0, x1 x1^T / a1 + x2 x2^T / a2 + 0.3^2 I)
        a1, a2 = log_alpha.exp()
        cov = x1.double() @ x1.double().T / a1 + x2.double() @ x2.double().T / a2 + 0.09 * torch.eye(80)
        return -dist.MultivariateNormal(torch.zeros(80, dtype=torch.float64), cov).log_prob(y.double())

    best = _argmin(neg_exact_log_evidence).exp()
    found = torch.tensor([scales["big"], scales["small"]], dtype=torch.float64)
    assert scales["big"] == pytest.approx(float(best[0]), rel=0.01)
    assert scales["small"] > 100 * scales["big"]  # the test means something: the two groups differ
    # the evidence is flat in the small weights' precision: the value, not the place, of the optimum is reached
    assert -float(neg_exact_log_evidence(found.log())) == pytest.approx(-float(neg_exact_log_evidence(best.log())),
                                                                       abs=0.01)
    assert post.info["log_marginal_likelihood"] == pytest.approx(-float(neg_exact_log_evidence(found.log())),
                                                                 abs=0.01)
    single = zoo.fit(two_groups, (x1, x2, y), "laplace", prior_rounds=4, num_samples=10, seed=0)
    assert post.info["log_marginal_likelihood"] > single.info["log_marginal_likelihood"] + 1


@pytest.mark.parametrize("site, power, prior", [("precision", -0.5, dist.Gamma(1.0, 0.01)),
                                                ("sigma", 1.0, dist.HalfNormal(2.0)),
                                                ("variance", 0.5, dist.Gamma(2.0, 2.0))])
def test_the_noise_is_the_exact_evidence_optimum_of_a_linear_gaussian_model(site, power, prior):
    """MacKay's beta = (N - gamma) / RSS, as ``noise`` moves the MAP, is where the exact evidence of a
    linear-Gaussian model (with the noise site's prior) peaks, whether the site is the likelihood's precision, its
    standard deviation or its variance; the joint's own mode is far from it with 15 weights fitted to 30 points."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 15, generator=g)
    y = x @ torch.randn(15, generator=g) + 0.5 * torch.randn(30, generator=g)

    def linear(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([15]).to_event(1))
        noise = pyro.sample(site, prior)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, noise**power), obs=y)

    def beta_of(post):
        return float(post.params["laplace.loc"][-1].exp() ** (-2 * power))

    options = dict(curvature="ggn", prior_per_site=True, prior_rounds=12, num_samples=10, seed=0)
    post = zoo.fit(linear, (x, y), "laplace", noise=site, **options)

    def neg_log_target(log_hyper):  # the exact evidence, the noise site's prior and its log's Jacobian
        alpha, value = log_hyper.exp()
        cov = x.double() @ x.double().T / alpha + torch.eye(30, dtype=torch.float64) * value ** (2 * power)
        evidence = dist.MultivariateNormal(torch.zeros(30, dtype=torch.float64), cov).log_prob(y.double())
        return -(evidence + prior.log_prob(value) + log_hyper[1])

    alpha, value = _argmin(neg_log_target).exp().tolist()
    assert beta_of(post) == pytest.approx(value ** (-2 * power), rel=0.005)
    assert post.info["prior_precision_scale"] == pytest.approx(alpha, rel=0.005)
    joint_mode = zoo.fit(linear, (x, y), "laplace", **options)
    assert beta_of(joint_mode) > 1.3 * value ** (-2 * power)  # the test means something: the joint's mode overrates it
    with pytest.raises(zoo.ZooError, match="noise='w' must name"):
        zoo.fit(linear, (x, y), "laplace", noise="w", **options)


def test_flat_prior_coefficients_count_as_determined_by_the_data_in_the_noise():
    """With flat priors on some coefficients (Stan's default) the evidence integrates them out, so the noise it
    prefers leaves them a degree of freedom each (REML): gamma counts 1 per flat coordinate, not 0."""
    g = torch.Generator().manual_seed(3)
    x, z = torch.randn(30, 4, generator=g), torch.randn(30, 10, generator=g)
    y = x @ torch.tensor([2.0, -1.0, 0.5, 1.0]) + z @ torch.randn(10, generator=g) + 0.5 * torch.randn(30, generator=g)
    prior = dist.HalfNormal(2.0)

    def partly_flat(x, z, y=None):
        beta = pyro.sample("beta", flat(constraints.real, 4))
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
        sigma = pyro.sample("sigma", prior)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ beta + z @ w, sigma), obs=y)

    post = zoo.fit(partly_flat, (x, z, y), "laplace", noise="sigma", curvature="ggn", prior_per_site=True,
                   prior_rounds=12, num_samples=10, seed=0)

    def neg_log_target(log_hyper):  # beta integrated out under its flat prior: y's restricted likelihood
        alpha, sigma = log_hyper.exp()
        xd, zd, yd = x.double(), z.double(), y.double()
        cov = zd @ zd.T / alpha + torch.eye(30, dtype=torch.float64) * sigma**2
        inv = torch.linalg.inv(cov)
        gram = xd.T @ inv @ xd
        residual_form = yd @ inv @ yd - yd @ inv @ xd @ torch.linalg.solve(gram, xd.T @ inv @ yd)
        log_evidence = -0.5 * (26 * math.log(2 * math.pi) + torch.logdet(cov) + torch.logdet(gram) + residual_form)
        return -(log_evidence + prior.log_prob(sigma) + log_hyper[1])

    alpha, sigma = _argmin(neg_log_target).exp().tolist()
    found = float(post.params["laplace.loc"][-1].exp())
    assert found == pytest.approx(sigma, rel=0.005)
    assert post.info["prior_precision_scale"] == pytest.approx(alpha, rel=0.01)
