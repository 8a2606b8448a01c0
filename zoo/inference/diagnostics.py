"""Can the draws be trusted? R-hat, ESS, divergences and tree depth for nuts; the PSIS k-hat of the
approximation for svi and laplace. Thresholds: R-hat <= 1.01 and bulk and tail ESS above 100 per chain
(Vehtari, Gelman, Simpson, Carpenter & Buerkner 2021); k-hat <= 0.7, with 0.5 - 0.7 a caution (Yao,
Vehtari, Simpson & Gelman 2018).

ArviZ-free: its statistics come through the helpers at the bottom of ``arviz.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .flat import PSIS_MAX_DIM
from .nuts import NUTS

R_HAT_MAX = 1.01
ESS_PER_CHAIN = 100
DEPTH_HITS_MAX = 0.05  # fraction of draws at the maximum tree depth
# an adapted step size this small (with an adapted diagonal mass matrix) means extreme curvature or scale
STEP_SIZE_MIN = 1e-3
K_HAT_BAD, K_HAT_CAUTION = 0.7, 0.5
PER_ENTRY = 8  # a site with at most this many entries gets one row per entry, a larger one a single row
MAX_ENTRIES = 1000  # a larger site's statistics come from this many of its entries, evenly spaced
LISTED = 5  # names listed in one warning


@dataclass
class Row:
    """Convergence of one parameter, or of a whole site of ``entries`` entries: its largest R-hat and
    smallest ESS, computed over ``checked`` of them."""

    name: str
    r_hat: float
    ess_bulk: float
    ess_tail: float
    entries: int = 1
    checked: int = 1

    @property
    def label(self) -> str:
        if self.entries == 1:
            return self.name
        counted = f"{self.checked:,} of {self.entries:,}" if self.checked < self.entries else f"{self.entries:,}"
        return f"{self.name} [{counted}]"


@dataclass
class Diagnosis:
    """What :func:`diagnose` found. ``mcmc``: chains (nuts) rather than draws of an approximation.
    ``rows``: per parameter or per site (nuts only). ``divergences``: divergent transitions after warmup;
    ``max_tree_depth_hits``: fraction of draws at the maximum tree depth (nuts; None where not recorded).
    ``pareto_k``: PSIS k-hat of the approximation (svi, laplace), or None with ``pareto_k_reason``.
    ``warnings``: what to look at; ``ok`` is False when any of them is serious (every one but the k-hat
    caution in 0.5 - 0.7). ``notes``: context, no verdict."""

    method: str
    num_chains: int
    num_draws: int
    mcmc: bool = False
    rows: list[Row] = field(default_factory=list)
    divergences: int | None = None
    max_tree_depth: int | None = None
    max_tree_depth_hits: float | None = None
    pareto_k: float | None = None
    pareto_k_reason: str | None = None
    psis_ess: float | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ok: bool = True

    def warn(self, message: str, serious: bool = True) -> None:
        self.warnings.append(message)
        self.ok = self.ok and not serious

    def __str__(self) -> str:
        if self.mcmc:
            lines = [f"{self.method}, {self.num_chains} chain{'s' * (self.num_chains != 1)} x {self.num_draws} draws"]
        else:
            lines = [f"{self.method}, {self.num_chains * self.num_draws} draws from the approximation"]
        if self.rows:
            width = max(5, *(len(r.label) for r in self.rows)) + 2
            lines.append(f"{'param':{width}s}{'r_hat':>7s}{'ess_bulk':>10s}{'ess_tail':>10s}")
            lines += [f"{r.label:{width}s}{_fmt(r.r_hat, 3):>7s}{_fmt(r.ess_bulk, 0):>10s}{_fmt(r.ess_tail, 0):>10s}"
                      for r in self.rows]
            if any(r.entries > 1 for r in self.rows):
                lines.append("[n]: a site of n entries, its largest r_hat and smallest ESS")
        stats = []
        if self.divergences is not None:
            stats.append(f"divergences: {self.divergences}")
        if self.max_tree_depth_hits is not None:
            stats.append(f"tree depth at max ({self.max_tree_depth}): {self.max_tree_depth_hits:.1%}")
        if stats:
            lines.append("   ".join(stats))
        if not self.mcmc:
            if self.pareto_k is not None:
                ess = f" (PSIS ESS {self.psis_ess:.0f})" if self.psis_ess is not None else ""
                lines.append(f"Pareto k-hat: {_fmt(self.pareto_k, 2)}{ess}")
            else:
                lines.append(f"Pareto k-hat: unavailable ({self.pareto_k_reason})")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("OK" if self.ok else "NOT OK")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Diagnosis({self.method}, ok={self.ok}, rows={len(self.rows)}, divergences={self.divergences}, "
                f"pareto_k={self.pareto_k}, warnings={len(self.warnings)})")


def _fmt(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def diagnose(post) -> Diagnosis:
    """R-hat, ESS, divergences and tree depth (nuts) or the PSIS k-hat of the approximation (svi,
    laplace) of a :class:`Posterior`; ``str()`` of the result is a readable report."""
    mcmc = post.method in ("nuts", "hmc") or "diverging" in post.sample_stats
    diagnosis = Diagnosis(post.method, post.num_chains, post.num_draws, mcmc=mcmc)
    if mcmc:
        _chains(post, diagnosis)
    else:
        _approximation(post, diagnosis)
    if post.status.stopped:
        diagnosis.warn(f"the fit stopped early: {post.status.stopped}")
    if post.status.interrupted:
        diagnosis.notes.append(f"the fit was interrupted: {post.status.interrupted}")
    return diagnosis


def _chains(post, d: Diagnosis) -> None:
    from .arviz import convergence_stats

    chains, draws = post.num_chains, post.num_draws
    if not post.samples:
        d.notes.append("no global latent sites: nothing to check")
    elif draws < 4:
        d.warn(f"{draws} draws per chain: R-hat and ESS need at least 4; draw more (num_samples)")
    else:
        picked = {}
        for name, value in post.samples.items():
            flat = value.detach().cpu().double().numpy().reshape(chains, draws, -1)
            n = flat.shape[-1]
            index = np.arange(n) if n <= MAX_ENTRIES else np.unique(np.linspace(0, n - 1, MAX_ENTRIES).round())
            index = index.astype(int)
            fixed = np.ptp(flat[..., index].reshape(-1, len(index)), axis=0) == 0
            if fixed.any() and not fixed.all():  # fixed by the support (a Cholesky factor's first row), not stuck
                index = index[~fixed]
            picked[name] = (flat[..., index], index, tuple(value.shape[2:]))
        stats = convergence_stats({k: v[0] for k, v in picked.items()})
        stuck_chains = set()
        for name, (values, index, shape) in picked.items():
            moving = np.ptp(values, axis=1) > 0  # (chain, entries)
            stuck_chains.update(int(c) for c in np.flatnonzero(~moving.all(axis=1)))
            r_hat = np.where(moving.all(axis=0), stats[name]["r_hat"], np.inf)  # a stuck chain: 0/0 or x/0
            bulk, tail = stats[name]["ess_bulk"], stats[name]["ess_tail"]
            d.rows += _rows(name, shape, index, r_hat, bulk, tail)
        if stuck_chains:
            d.warn(f"chain{'s' * (len(stuck_chains) > 1)} {', '.join(map(str, sorted(stuck_chains)))} never "
                   "moved in some coordinates (zero variance): R-hat is inf there; the sampler is stuck, so check "
                   "the initial point and the step size, or reparameterise")
        _check_rows(d, chains)
        if chains == 1:
            d.notes.append("one chain: R-hat compares its two halves only; run 2 or more chains")
    _sampler_stats(post, d)


def _rows(name, shape, index, r_hat, bulk, tail) -> list[Row]:
    entries = math.prod(shape)
    if entries == 1:
        return [Row(name, float(r_hat[0]), float(bulk[0]), float(tail[0]))]
    if entries <= PER_ENTRY:
        labels = [",".join(map(str, np.unravel_index(i, shape))) for i in index]
        return [Row(f"{name}[{label}]", float(r), float(b), float(t))
                for label, r, b, t in zip(labels, r_hat, bulk, tail, strict=True)]
    return [Row(name, _worst(r_hat, np.max), _worst(bulk, np.min), _worst(tail, np.min),
                entries=entries, checked=len(index))]


def _worst(values: np.ndarray, pick) -> float:
    """The largest or smallest entry; nan (non-finite draws) wins over every number."""
    return math.nan if np.isnan(values).any() else float(pick(values))


def _names(rows: list[Row], value) -> str:
    listed = ", ".join(f"{r.label} ({value(r)})" for r in rows[:LISTED])
    return listed + (f" and {len(rows) - LISTED} more" if len(rows) > LISTED else "")


def _check_rows(d: Diagnosis, chains: int) -> None:
    high = [r for r in d.rows if not r.r_hat <= R_HAT_MAX]  # nan fails too
    if high:
        d.warn(f"r_hat > {R_HAT_MAX} for {_names(high, lambda r: _fmt(r.r_hat, 3))}: the chains disagree, so "
               "they have not converged (Vehtari et al. 2021); run a longer warmup and more draws, or reparameterise")
    need = ESS_PER_CHAIN * chains
    low = [r for r in d.rows if not (r.ess_bulk >= need and r.ess_tail >= need)]  # nan fails too
    if low:
        d.warn(f"ESS below {need} (100 per chain, Vehtari et al. 2021) for "
               f"{_names(low, lambda r: f'bulk {_fmt(r.ess_bulk, 0)}, tail {_fmt(r.ess_tail, 0)}')}: "
               "too few effective draws for reliable means and quantiles; draw more (num_samples) or reparameterise")


def _sampler_stats(post, d: Diagnosis) -> None:
    stats = post.sample_stats
    if "diverging" in stats:
        diverging = stats["diverging"].detach().cpu().numpy().astype(bool)
        d.divergences = int(diverging.sum())
        if d.divergences:
            target = post.options.get("target_accept", NUTS.target_accept)
            d.warn(f"{d.divergences} divergent transition{'s' * (d.divergences > 1)} after warmup "
                   f"({diverging.mean():.1%} of draws): the sampler cannot follow the posterior's curvature there "
                   f"and its draws may be biased; raise target_accept (now {target}) or reparameterise "
                   "(e.g. non-centred)")
    if "step_size" in stats and stats["step_size"].numel():
        step = float(stats["step_size"].min())
        if step < STEP_SIZE_MIN:
            d.warn(f"the adapted step size collapsed to {step:.2g}: the posterior has regions of extreme curvature "
                   "or is on a wildly different scale than its parameters' units, and the draws barely move; "
                   "standardise the data, or reparameterise")
    if "tree_depth" in stats:
        d.max_tree_depth = int(post.options.get("max_tree_depth", NUTS.max_tree_depth))
        depth = stats["tree_depth"].detach().cpu().numpy()
        d.max_tree_depth_hits = float((depth >= d.max_tree_depth).mean()) if depth.size else 0.0
        if d.max_tree_depth_hits > DEPTH_HITS_MAX:
            d.warn(f"{d.max_tree_depth_hits:.1%} of draws stopped at the maximum tree depth ({d.max_tree_depth}): "
                   "trajectories are cut short, so the sampler explores slowly; raise max_tree_depth or reparameterise")


def _approximation(post, d: Diagnosis) -> None:
    d.notes.append("no R-hat: the draws are one set of independent draws from the approximation, not chains, "
                   "and their ESS says nothing about how good the approximation is; the k-hat does")
    log_ratio = post.sample_stats.get("log_ratio")
    if log_ratio is None:
        d.pareto_k_reason = _no_ratios(post)
        return
    ratios = log_ratio.detach().cpu().double().numpy().ravel()
    invalid = int((np.isnan(ratios) | (ratios == np.inf)).sum())
    if invalid:
        d.pareto_k = math.inf
        d.warn(f"log p - log q is nan or +inf at {invalid} of {ratios.size} draws: do not trust the approximation "
               "(it puts mass where the model's density is not finite)")
        return
    finite = ratios[np.isfinite(ratios)]
    if finite.size < ratios.size:
        d.notes.append(f"{ratios.size - finite.size} draws have p = 0 (importance weight 0)")
    if finite.size < 2:
        d.pareto_k = math.inf
        d.warn("the model's density is 0 at (nearly) every draw of the approximation: do not trust it")
        return
    if np.ptp(finite) == 0:  # p / q constant: q is the posterior; the Pareto fit has no tail to fit
        d.pareto_k, d.psis_ess = -math.inf, float(finite.size)
        d.notes.append("log p - log q is constant: the approximation equals the posterior")
        return
    from .arviz import pareto_k  # here, not above: importing ArviZ takes seconds that a fit without draws skips

    d.pareto_k, d.psis_ess = pareto_k(finite)
    if finite.size < 100:
        d.notes.append(f"k-hat from {finite.size} draws is noisy; draw 100 or more (num_samples)")
    if d.pareto_k > K_HAT_BAD:
        # a network's MAP overfits (guide_start.py): the MAP is suggested as a start for other models only
        from_prior = post.method == "svi" and post.info.get("init") == "prior" and not post.model.last_layer
        start = ", start at the MAP (init='map')" if from_prior else ""
        d.warn(f"Pareto k-hat {d.pareto_k:.2f} > {K_HAT_BAD}: do not trust the approximation; Yao, Vehtari, "
               "Simpson & Gelman 2018 (p / q is heavy-tailed: q misses posterior mass); fit longer, use a richer "
               f"guide (e.g. full-rank){start} or nuts")
    elif d.pareto_k > K_HAT_CAUTION:
        d.warn(f"caution: Pareto k-hat {d.pareto_k:.2f} in ({K_HAT_CAUTION}, {K_HAT_BAD}]: the approximation is "
               "usable, but expectations under it may be off and importance-sampling corrections converge "
               "slowly (Yao et al. 2018)", serious=False)


def _no_ratios(post) -> str:
    """Why a fit of svi or laplace has no log p - log q at its draws."""
    samples = post.samples
    if not samples:
        return "no global latent sites"
    if post.num_draws < 2:
        return "fewer than two draws"
    if post.sites.local:
        return "the model has per-point latents"
    constant = [k for k, v in samples.items() if bool((v == v[:, :1]).all())]
    if constant:
        return f"guide is a point mass (on {', '.join(constant[:LISTED])})"
    if post.method == "laplace" and post.info.get("subset", "all") != "all":
        return "Laplace over a subset of the latents: q is no density over all of them"
    size = sum(math.prod(v.shape[2:]) for v in samples.values())
    if size > PSIS_MAX_DIM:
        return f"model too large ({size:,} latent coordinates; the check stops at {PSIS_MAX_DIM:,})"
    return "no log p - log q recorded at the draws (the guide draws discrete values, or the fit predates the check)"
