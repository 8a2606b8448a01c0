"""Posterior -> arviz.InferenceData, and the R-hat, ESS and PSIS helpers of diagnostics.py: the only place
that knows ArviZ's API."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import arviz as az
import numpy as np
import torch
import xarray as xr

from .._errors import ZooError

MAX_DEFAULT_NUMBERS = 10_000  # latent numbers per draw that to_arviz keeps by default


def to_inference_data(post, data=None, var_names=None) -> az.InferenceData:
    """Groups: posterior, sample_stats and, given ``data``, posterior_predictive, log_likelihood
    (pointwise, original units) and observed_data. Every array is shaped (chain, draw, ...).

    ``var_names`` picks the latent sites in the posterior group; default every site, or where they hold more
    than 10,000 numbers per draw and the model names a last layer (a network's weights), that layer and the
    sites the model displays (its noise).
    """
    chains, draws = post.num_chains, post.num_draws
    if var_names is None:
        var_names = list(post.samples)
        if post.model.last_layer and sum(v[0, 0].numel() for v in post.samples.values()) > MAX_DEFAULT_NUMBERS:
            shown = [s for s in post.model.display.summary_sites or [] if s in post.samples]
            var_names = [*post.model.last_layer, *shown]
    unknown = [v for v in var_names if v not in post.samples]
    if unknown:
        raise ZooError(f"to_arviz: no latent sites {unknown}; the posterior has {sorted(post.samples)}")
    posterior = {k: post.samples[k].cpu().numpy() for k in var_names}
    posterior.update({k: v.cpu().numpy() for k, v in post.deterministic.items()})
    post.model.load_params(post.params)
    for k, v in post.model.point_estimates().items():  # constant over draws: fitted, not sampled
        posterior[k] = np.broadcast_to(v.cpu().numpy(), (chains, draws, *v.shape)).copy()
    named = post.model.display.dims
    dims = {k: named.get(k, [f"{k}_dim_{i}" for i in range(v.ndim - 2)]) for k, v in posterior.items()}
    groups = {"posterior": posterior}
    stats = {k: v.cpu().numpy() for k, v in post.sample_stats.items()}
    if stats:
        groups["sample_stats"] = stats
    coords = {}
    if data is not None:
        args, _ = post.model.arguments(data)
        inputs = args[:len(args) - post.sites.num_targets]
        one = len(post.sites.observed) == 1
        for site in post.sites.observed:
            summary = post._summary(args, site, with_log_prob=True)
            observed, replicated = _observed(post, inputs, site, summary)
            # a variable named like its dim would become a coordinate (and its group empty): "obs" site -> "obs_dim_0"
            first = "obs" if one and site != "obs" else f"{site}_dim_0"
            obs_dims = [first] + [f"{site}_dim_{i}" for i in range(1, observed.ndim)]
            groups.setdefault("posterior_predictive", {})[site] = replicated.reshape(
                chains, draws, *replicated.shape[1:])
            groups.setdefault("observed_data", {})[site] = observed
            if bool(summary["pointwise"][0]):  # else one value per draw: no pointwise log-likelihood to store
                log_lik = post.pointwise_log_likelihood(summary, site).cpu().numpy()
                groups.setdefault("log_likelihood", {})[site] = log_lik.reshape(chains, draws, *log_lik.shape[1:])
            dims[site] = obs_dims
            coords[obs_dims[0]] = np.arange(observed.shape[0]) if observed.ndim else np.arange(1)
    with _chain_draw_layout():
        idata = az.from_dict(**groups, coords=coords, dims=dims,
                             attrs={"inference_library": "zoo", "method": post.method})
    return _with_loss(idata, post)


@contextmanager
def _chain_draw_layout():
    """Our arrays are (chain, draw, ...) by construction: ArviZ's guess that more chains than draws (256
    batched chains of 100 draws) means a transposed array is wrong here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="More chains", category=UserWarning)
        yield


def _observed(post, inputs, site, summary):
    """The observations of ``site`` (original units) and draws from its posterior predictive."""
    pred = post.predict(inputs, site=site)
    value = summary["value"][0]
    if pred.probs is not None:
        replicated = torch.distributions.Categorical(probs=pred.draw_probs).sample()
        return value.cpu().numpy(), replicated.cpu().numpy()
    shift, scale = post.target_scale if bool(summary["continuous"][0]) else (0.0, 1.0)
    return (value * scale + shift).cpu().numpy(), pred.samples.cpu().numpy()


def generative_inference_data(post, data, num_samples: int, iwae_samples: int) -> az.InferenceData:
    """An autoencoder's groups: codes of the chosen points ``data`` under q(z | x), replicated x,
    observations, per-point IWAE log p(x) (a single draw: one estimate per point), the loss trace."""
    groups, dims, coords, log_px = {}, {}, {}, None
    if data is not None:
        flat = post._points(data)
        z = post.latents(flat, num_samples)
        with torch.no_grad():
            replicated = post.net.decoder(z).sample()
        groups["posterior"] = {"z": z.unsqueeze(0).cpu().numpy()}
        groups["posterior_predictive"] = {"x": replicated.unsqueeze(0).cpu().numpy()}
        groups["observed_data"] = {"x": flat.cpu().numpy()}
        if post.code_family != "delta":
            log_px = post._bounds(flat, iwae_samples)[0].reshape(1, 1, -1).cpu().numpy()
        dims = {"z": ["obs", "latent"], "x": ["obs", "pixel"]}
        coords = {"obs": np.arange(flat.shape[0])}
    with _chain_draw_layout():
        idata = az.from_dict(**groups, coords=coords, dims=dims,
                             attrs={"inference_library": "zoo", "method": post.method})
    if log_px is not None:  # one estimate per point: dims (chain, draw, obs), not x's pixels
        idata.add_groups(log_likelihood=xr.Dataset(
            {"x": (("chain", "draw", "obs"), log_px)}, coords={"chain": [0], "draw": [0], "obs": coords["obs"]}))
    return _with_loss(idata, post)


def _with_loss(idata: az.InferenceData, post) -> az.InferenceData:
    """The loss trace per step in ``sample_stats``."""
    if post.loss:
        loss = xr.DataArray(np.asarray(post.loss), dims=["step"], name="loss")
        if hasattr(idata, "sample_stats"):
            idata.sample_stats["loss"] = loss
        else:
            idata.add_groups(sample_stats=xr.Dataset({"loss": loss}))
    return idata


# --- diagnostics (zoo.inference.diagnostics calls ArviZ only through these) ---


def convergence_stats(draws: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Rank-normalised split R-hat and bulk and tail ESS (Vehtari et al. 2021) of every entry of each
    site; ``draws`` maps site -> array (chain, draw, ...). Returns site -> {"r_hat", "ess_bulk",
    "ess_tail"}, each shaped like one draw. A chain without variance gives R-hat 0/0 or x/0: computed
    quietly here (nan or a huge value come back), for the caller to report. One chain is passed as its two
    halves (ArviZ's R-hat needs two chains; split R-hat compares the halves anyway)."""
    if not draws:
        return {}
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in draws.items()}
    if next(iter(arrays.values())).shape[0] == 1:
        half = next(iter(arrays.values())).shape[1] // 2
        arrays = {k: np.concatenate([v[:, :half], v[:, half:2 * half]]) for k, v in arrays.items()}
    with _chain_draw_layout():
        dataset = az.convert_to_dataset(arrays)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r_hat = az.rhat(dataset)
        bulk, tail = az.ess(dataset, method="bulk"), az.ess(dataset, method="tail")
    return {k: {"r_hat": r_hat[k].values, "ess_bulk": bulk[k].values, "ess_tail": tail[k].values}
            for k in draws}


def pareto_k(log_ratios: np.ndarray) -> tuple[float, float]:
    """PSIS of iid draws from an approximation q (Yao, Vehtari, Simpson & Gelman 2018): the Pareto
    k-hat of the ratios exp(log_ratios) = p / q, and the effective sample size of the smoothed weights.
    ``log_ratios`` must be finite."""
    # the caller reports k-hat > 0.7 in its own words; a heavy tail overflows numpy inside the fit, to no harm
    with warnings.catch_warnings(), np.errstate(over="ignore"):
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        log_weights, k = az.psislw(np.asarray(log_ratios, dtype=np.float64).ravel(), reff=1.0)
    return float(k), float(1.0 / np.exp(2 * log_weights).sum())
