"""Sparse variational GPs and doubly-stochastic deep GPs on GPyTorch kernels, as Pyro model/guide pairs.

Every layer l holds Q_l independent GPs with shared inducing inputs Z_l (M x D_l) and whitened
inducing values v_l ~ N(0, I), u_l = L_l v_l with K_zz = L_l L_l^T (Hensman et al. 2015). Given v_l,
each point's layer output is the GP conditional, taken per point as in Salimbeni & Deisenroth (2017):

    f_l(x) | v_l ~ N(m_l(x) + A^T v_l,  k(x, x) - A^T A),   A = L_l^{-1} k(Z_l, x),

with m_l a fixed linear mean for inner layers (the PCA projection of the inputs) and zero for the last.
The model samples v_l from the prior N(0, I) and f_l from that conditional. The guide samples v_l from
q(v_l) = N(mu_l, S_l) (full covariance per output) and f_l from the marginal
q(f_l(x)) = N(m_l(x) + A^T mu_l, k(x, x) - A^T A + A^T S_l A), v_l integrated out per point. As in GPyTorch's
pyro_model/pyro_guide, the f_l sites are masked: they carry the samples from layer to layer and to the
likelihood but add no log-density, so with TraceMeanField_ELBO (analytic KL) the loss is Salimbeni's
doubly-stochastic bound E_q[log p(y | f_L)] - sum_l KL(q(v_l) || p(v_l)). Kernel hyperparameters, inducing
inputs and the noise are point estimates (type-II maximum likelihood), as in both papers.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():  # linear_operator 0.6.1 calls torch.jit.script at import, deprecated from torch 2.14
    warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
    import gpytorch
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .._data import training_arrays
from .._errors import ZooError
from .._model import Defaults, Display, ZooModel
from .._registry import register_model
from .cnn import check_labels
from .layers import strip_plate_slot

LIKELIHOODS = ("gaussian", "bernoulli", "softmax")
REFUSED = {"laplace": "its layer outputs are per-point latents drawn by its guide; use svi",
           "nuts": "its inducing values and layer outputs number thousands; use svi, or gp-exact for nuts"}
CARD = dict(task="regression", family="gaussian-process", default_guide="inducing", guides=("inducing",),
            backends=("svi",), refused=REFUSED)  # what svgp's and dgp's registry cards share

KERNELS = ("rbf", "matern52")
JITTER = 1e-5


class GPLayer(nn.Module):
    """``out_dim`` GPs on ``in_dim`` inputs with shared inducing inputs ``inducing`` (M, in_dim)."""

    def __init__(self, in_dim: int, out_dim: int, inducing: torch.Tensor, kernel: str,
                 mean_weight: torch.Tensor | None, q_scale: float, learn_inducing: bool = True):
        super().__init__()
        batch = torch.Size([out_dim])
        base = (gpytorch.kernels.RBFKernel(ard_num_dims=in_dim, batch_shape=batch) if kernel == "rbf" else
                gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=in_dim, batch_shape=batch))
        self.kernel = gpytorch.kernels.ScaleKernel(base, batch_shape=batch)
        if learn_inducing:
            self.z = nn.Parameter(inducing.clone())
        else:
            self.register_buffer("z", inducing.clone())
        self.register_buffer("mean_weight", mean_weight)
        m = inducing.shape[0]
        self.q_loc = nn.Parameter(torch.zeros(out_dim, m))
        self.q_offdiag = nn.Parameter(torch.zeros(out_dim, m, m))
        self.q_diag = nn.Parameter(torch.full((out_dim, m), float(torch.log(torch.expm1(torch.tensor(q_scale))))))

    def prior(self) -> dist.Distribution:
        eye = torch.eye(self.q_loc.shape[-1], device=self.q_loc.device)
        return dist.MultivariateNormal(torch.zeros_like(self.q_loc), scale_tril=eye).to_event(1)

    def posterior_scale_tril(self) -> torch.Tensor:
        # rows scaled by the diagonal: an optimiser step on the off-diagonals cannot swamp a tiny diagonal
        # (float32 inverse of the Cholesky factor stays accurate for the 1e-5 variances of inner layers)
        eye = torch.eye(self.q_loc.shape[-1], device=self.q_loc.device)
        return F.softplus(self.q_diag).unsqueeze(-1) * (eye + self.q_offdiag.tril(-1))

    def posterior(self) -> dist.Distribution:
        return dist.MultivariateNormal(self.q_loc, scale_tril=self.posterior_scale_tril()).to_event(1)

    def conditional(self, h: torch.Tensor, v: torch.Tensor) -> dist.Distribution:
        """p(f(h) | v) per point: batch (..., n), event (out_dim,), for inputs h (..., n, in_dim)."""
        a, k_diag = self._project(h)
        return self._per_point(h, (a * v.unsqueeze(-1)).sum(-2), k_diag - a.pow(2).sum(-2))

    def marginal(self, h: torch.Tensor) -> dist.Distribution:
        """q(f(h)) = int p(f(h) | v) q(v) dv per point (Salimbeni & Deisenroth's eq. 7), shaped as conditional."""
        a, k_diag = self._project(h)
        mean = (a * self.q_loc.unsqueeze(-1)).sum(-2)
        spread = self.posterior_scale_tril().transpose(-1, -2) @ a                # (..., Q, M, n)
        return self._per_point(h, mean, k_diag - a.pow(2).sum(-2) + spread.pow(2).sum(-2))

    def _project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A = L^-1 k(Z, h) (..., Q, M, n) and k(h, h)'s diagonal (..., Q, n), with K_zz = L L^T."""
        # the kernels' dense forward: GPyTorch's lazy __call__ costs about five times as much here
        kzz = self.kernel.forward(self.z, self.z)
        chol = torch.linalg.cholesky(kzz + JITTER * torch.eye(kzz.shape[-1], device=kzz.device))
        h = h.unsqueeze(-3)                                                  # (..., 1, n, D) against Q kernels
        a = torch.linalg.solve_triangular(chol, self.kernel.forward(self.z, h), upper=False)
        return a, self.kernel.forward(h, h, diag=True)

    def _per_point(self, h: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> dist.Distribution:
        mean, var = mean.transpose(-1, -2), var.clamp_min(1e-10).transpose(-1, -2)
        if self.mean_weight is not None:
            mean = mean + h @ self.mean_weight
        return dist.Normal(mean, var.sqrt()).to_event(1)


def inducing_points(x: torch.Tensor, m: int, seed: int = 0, iterations: int = 10) -> torch.Tensor:
    """``m`` inducing inputs: k-means centres of ``x`` (Lloyd's iterations from a seeded random subset)."""
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=gen)[:m]].clone()
    if x.shape[0] <= m:
        return centres
    for _ in range(iterations):
        nearest = torch.cdist(x, centres).argmin(1)
        for j in range(m):
            members = x[nearest == j]
            if len(members):
                centres[j] = members.mean(0)
    return centres


def pca_weight(x: torch.Tensor, out_dim: int) -> torch.Tensor:
    """The linear mean of an inner layer: identity-padded when widening, else the top principal directions."""
    d = x.shape[1]
    if out_dim >= d:
        return torch.eye(d, out_dim)
    return torch.linalg.svd(x - x.mean(0), full_matrices=False).Vh[:out_dim].T.contiguous()


class DeepGP(nn.Module):
    """Layers of GPs from inputs x (n, D) to the likelihood's parameters; one layer is an SVGP."""

    def __init__(self, x: torch.Tensor, widths: list[int], num_inducing: int | None, kernel: str,
                 likelihood: str):
        super().__init__()
        self.likelihood = likelihood
        # num_inducing=None: the training inputs themselves, held fixed (the exact GP for small data)
        z = x.clone() if num_inducing is None else inducing_points(x, num_inducing)
        h, dims, layers = x, [x.shape[1], *widths], []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            last = i == len(widths) - 1
            weight = None if last else pca_weight(h, d_out)
            # inner layers start near their mean function (small q variance), as Salimbeni & Deisenroth do
            layers.append(GPLayer(d_in, d_out, z, kernel, weight, q_scale=1.0 if last else 1e-5 ** 0.5,
                                  learn_inducing=num_inducing is not None))
            if not last:
                h, z = h @ weight, z @ weight
        self.layers = nn.ModuleList(layers)
        self.raw_noise = nn.Parameter(torch.tensor(-2.0)) if likelihood == "gaussian" else None

    @property
    def noise(self) -> torch.Tensor:
        return F.softplus(self.raw_noise) + 1e-6

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """The point-estimated kernel hyperparameters (per layer: lengthscale (outputs, inputs), outputscale)
        and the noise, for ArviZ."""
        out = {}
        for i, layer in enumerate(self.layers):
            out[f"lengthscale{i}"] = layer.kernel.base_kernel.lengthscale[:, 0, :].detach()
            out[f"outputscale{i}"] = layer.kernel.outputscale.detach()
        if self.raw_noise is not None:
            out["noise"] = self.noise.detach()
        return out

    def dims(self) -> dict[str, list[str]]:
        """ArviZ dims: layer i maps the outputs of layer i - 1 (the data's inputs for i = 0) to its own."""
        names = {}
        for i in range(len(self.layers)):
            inputs = "input" if i == 0 else f"output{i - 1}"
            names[f"lengthscale{i}"] = [f"output{i}", inputs]
            names[f"outputscale{i}"] = [f"output{i}"]
        return names

    def propagate(self, h: torch.Tensor, draw) -> torch.Tensor:
        """Inputs ``h`` through the layers, one sample per point and layer (sites ``f0``, ``f1``, ...), each
        from ``draw(i, layer, h)``. The sites are masked, as in GPyTorch's pyro_model/pyro_guide: the guide
        draws from the marginal q(f_l), so they add nothing to the ELBO but carry the samples to the likelihood."""
        for i, layer in enumerate(self.layers):
            h = pyro.sample(f"f{i}", draw(i, layer, h).mask(False))
        return h

    def observe(self, f: torch.Tensor, y) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return pyro.sample("y", dist.Normal(f[..., 0], self.noise), obs=y)
        if self.likelihood == "bernoulli":  # as a two-class Categorical, logits (0, f)
            f = torch.cat([torch.zeros_like(f), f], -1)
        return pyro.sample("y", dist.Categorical(logits=f), obs=y)

    def model(self, x, y=None):
        pyro.module("gp", self)
        inducing = [strip_plate_slot(pyro.sample(f"u{i}", layer.prior()), 2) for i, layer in enumerate(self.layers)]
        with pyro.plate("data", x.shape[0]) as idx:
            f = self.propagate(x[idx], lambda i, layer, h: layer.conditional(h, inducing[i]))
            return self.observe(f, None if y is None else y[idx])

    def guide(self, x, y=None):
        pyro.module("gp", self)
        for i, layer in enumerate(self.layers):
            pyro.sample(f"u{i}", layer.posterior())
        with pyro.plate("data", x.shape[0]) as idx:
            self.propagate(x[idx], lambda i, layer, h: layer.marginal(h))


def check_inputs(name: str, args: tuple, features: int) -> None:
    """The points ``x`` of ``args`` must be (points, ``features``), as the model was built for."""
    x_arg = args[0] if args else None
    if not isinstance(x_arg, torch.Tensor) or x_arg.dim() != 2 or x_arg.shape[1] != features:
        shape = tuple(x_arg.shape) if isinstance(x_arg, torch.Tensor) else None
        raise ZooError(f"{name}: x must be (points, {features}) as the model was built for; got {shape}")


def _inputs(name: str, data) -> torch.Tensor:
    if data is None:
        raise ZooError(f"{name}: pass data= (the training split): the inducing inputs start at k-means centres "
                       "of the training inputs")
    return training_arrays(data)[0].float()


def _build(name: str, x, widths, num_inducing, kernel: str, likelihood: str, config: dict) -> ZooModel:
    checks = [
        (kernel in KERNELS, f"kernel must be one of {KERNELS}, got {kernel!r}"),
        (likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}"),
        (num_inducing is None or (isinstance(num_inducing, int) and num_inducing > 0),
         f"num_inducing must be a positive integer or None (the training inputs), got {num_inducing!r}"),
        (x.dim() == 2, f"x must be (points, features), got shape {tuple(x.shape)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ZooError(f"{name}: {message}")
    gp = DeepGP(x, widths, num_inducing, kernel, likelihood)
    num_classes = widths[-1] if likelihood == "softmax" else 2 if likelihood == "bernoulli" else None
    defaults = Defaults(fit={"svi": {"lr": 0.05, "batch_size": 10000, "num_steps": 2000, "elbo": "meanfield"}},
                        num_samples=100, predict_batch=256)
    return VariationalGPModel(name, gp, x.shape[1], num_classes, guides={"inducing": lambda zm: gp.guide},
                              config=config, modules={"gp": gp}, local_latents=True, vectorized=True,
                              defaults=defaults, display=Display(dims=gp.dims()))


class VariationalGPModel(ZooModel):
    """An SVGP or deep GP: x checked against its inputs, labels against its classes; its kernel hyperparameters,
    inducing inputs and noise are point estimates, shown beside the draws."""

    def __init__(self, name: str, gp: DeepGP, in_features: int, num_classes: int | None, **kwargs):
        super().__init__(gp.model, **kwargs)
        self.label, self.gp, self.in_features, self.num_classes = name, gp, in_features, num_classes

    def validate(self, args):
        check_inputs(self.label, args, self.in_features)
        y_arg = args[1] if len(args) > 1 else None
        if y_arg is not None and self.num_classes is not None:
            check_labels(self.label, y_arg, self.num_classes)

    def point_estimates(self):
        return self.gp.hyperparameters()


@register_model("svgp", likelihood="f ~ GP(0, k); y ~ Normal(f, noise) | Bernoulli | Categorical", **CARD,
                paper="Hensman, Matthews & Ghahramani 2015, Scalable Variational Gaussian Process Classification",
                notes="inducing values whitened, q(v) a full-covariance Gaussian; kernel hyperparameters, inducing "
                      "inputs and noise are point estimates. likelihood='bernoulli' or 'softmax' classifies.")
def svgp(*, data=None, num_inducing: int | None = 100, kernel: str = "rbf", likelihood: str = "gaussian",
         num_classes: int = 2) -> ZooModel:
    """Sparse variational GP (one layer of the deep GP)."""
    out = num_classes if likelihood == "softmax" else 1
    config = dict(num_inducing=num_inducing, kernel=kernel, likelihood=likelihood, num_classes=num_classes)
    return _build("svgp", _inputs("svgp", data), [out], num_inducing, kernel, likelihood, config)


@register_model("dgp", likelihood="f_l ~ GP(m_l, k_l) composed over layers; y ~ Normal(f_L, noise)", **CARD,
                paper="Salimbeni & Deisenroth 2017, Doubly Stochastic Variational Inference for Deep GPs",
                notes="inner layers of width min(30, D) with a linear (PCA) mean function; every layer's outputs are "
                      "sampled per point, so predictions average the draws propagated through the layers.")
def dgp(*, data=None, num_layers: int = 2, num_inducing: int | None = 100, kernel: str = "rbf",
        likelihood: str = "gaussian") -> ZooModel:
    """Doubly-stochastic deep GP with ``num_layers`` GP layers (2-5)."""
    if not isinstance(num_layers, int) or not 2 <= num_layers <= 5:
        raise ZooError(f"dgp: num_layers must be an integer in 2..5 (one layer is svgp), got {num_layers!r}")
    x = _inputs("dgp", data)
    width = min(30, x.shape[1])
    config = dict(num_layers=num_layers, num_inducing=num_inducing, kernel=kernel, likelihood=likelihood)
    return _build("dgp", x, [width] * (num_layers - 1) + [1], num_inducing, kernel, likelihood, config)
