"""The Laplace posterior's precision in each structure: ``H + diag(alpha * d)``, with ``H`` the curvature of the
log joint (the data's, and any prior that is not a fixed Normal) and ``d`` the fixed Normal priors' precisions.

Every structure answers the same questions for a prior-precision factor ``alpha`` per coordinate (float64):
``logdet`` (None where not positive definite), ``variances`` (the covariance's diagonal, for the evidence's
per-site tuning), ``sample`` (offsets from the mean) and ``log_density`` of offsets; ``state`` is what a saved
posterior keeps; ``root`` a dense square root ``R`` of the covariance (``R R^T = Sigma``), for the linearised
predictive's closed form.
"""

from __future__ import annotations

import math

import torch


class Dense:
    def __init__(self, h: torch.Tensor, d: torch.Tensor):
        self.h, self.d, self.size = h.double(), d.double(), d.numel()
        self._eig = None

    def matrix(self, alpha):
        return self.h + torch.diag(alpha * self.d)

    def _chol(self, alpha):
        chol, bad = torch.linalg.cholesky_ex(self.matrix(alpha))
        return None if bad else chol

    def logdet(self, alpha):
        if bool((self.d > 0).all()) and bool((alpha == alpha[0]).all()):
            # one eigendecomposition of D^-1/2 H D^-1/2 serves every uniform alpha (the prior's grid search)
            if self._eig is None:
                root = self.d.rsqrt()
                self._eig = torch.linalg.eigvalsh(self.h * root[:, None] * root[None, :]), float(self.d.log().sum())
            mu, log_d = self._eig
            a = float(alpha[0])
            return None if bool((mu + a <= 0).any()) else log_d + float((mu + a).log().sum())
        chol = self._chol(alpha)
        return None if chol is None else 2 * float(chol.diagonal().log().sum())

    def variances(self, alpha):
        return torch.cholesky_inverse(self._chol(alpha)).diagonal()

    def sample(self, num, alpha):
        chol = self._chol(alpha)
        eps = torch.randn(num, self.size, dtype=torch.float64, device=self.d.device)
        # L^-T eps has covariance (L L^T)^-1
        return torch.linalg.solve_triangular(chol.T, eps.T, upper=True).T

    def log_density(self, x, alpha):
        return _normal_log_density(((x @ self.matrix(alpha)) * x).sum(-1), self.logdet(alpha), self.size)

    def not_positive(self, alpha) -> int:
        return int((torch.linalg.eigvalsh(self.matrix(alpha)) <= 0).sum())

    def root(self, alpha):
        chol = self._chol(alpha)  # (L L^T)^-1 = L^-T L^-1
        return torch.linalg.solve_triangular(chol.T, torch.eye(self.size, dtype=chol.dtype, device=chol.device),
                                             upper=True)

    def state(self, alpha):
        return {"precision": self.matrix(alpha).float()}


class Diagonal:
    def __init__(self, h: torch.Tensor, d: torch.Tensor):
        self.h, self.d, self.size = h.double(), d.double(), d.numel()

    def diagonal(self, alpha):
        return self.h + alpha * self.d

    def logdet(self, alpha):
        p = self.diagonal(alpha)
        return None if bool((p <= 0).any()) else float(p.log().sum())

    def variances(self, alpha):
        return 1 / self.diagonal(alpha)

    def sample(self, num, alpha):
        eps = torch.randn(num, self.size, dtype=torch.float64, device=self.d.device)
        return eps * self.diagonal(alpha).rsqrt()

    def log_density(self, x, alpha):
        return _normal_log_density((x**2 * self.diagonal(alpha)).sum(-1), self.logdet(alpha), self.size)

    def not_positive(self, alpha) -> int:
        return int((self.diagonal(alpha) <= 0).sum())

    def root(self, alpha):
        return torch.diag(self.diagonal(alpha).rsqrt())

    def state(self, alpha):
        return {"precision": self.diagonal(alpha).float()}


class Kronecker:
    """``first (x) second + alpha d`` for one layer, d constant over it (its weights' prior): the eigenvalues
    are ``l1_i l2_j + alpha d`` in the eigenbasis ``Q1 (x) Q2``, never a (pq x pq) matrix."""

    def __init__(self, first: torch.Tensor, second: torch.Tensor, d: torch.Tensor):
        (l1, self.q1), (l2, self.q2) = torch.linalg.eigh(first.double()), torch.linalg.eigh(second.double())
        self.outer = l1.clamp_min(0)[:, None] * l2.clamp_min(0)[None, :]  # (p, q); rounding below 0 is 0
        self.d, self.size = d.double(), d.numel()
        self.shape = self.outer.shape

    def eigenvalues(self, alpha):
        return self.outer + (alpha * self.d).reshape(self.shape)

    def logdet(self, alpha):
        lam = self.eigenvalues(alpha)
        return None if bool((lam <= 0).any()) else float(lam.log().sum())

    def variances(self, alpha):
        return ((self.q1**2) @ (1 / self.eigenvalues(alpha)) @ (self.q2**2).T).reshape(-1)

    def sample(self, num, alpha):
        eps = torch.randn(num, *self.shape, dtype=torch.float64, device=self.d.device)
        return (self.q1 @ (eps * self.eigenvalues(alpha).rsqrt()) @ self.q2.T).reshape(num, -1)

    def log_density(self, x, alpha):
        rotated = self.q1.T @ x.reshape(-1, *self.shape) @ self.q2
        return _normal_log_density((rotated**2 * self.eigenvalues(alpha)).sum((-1, -2)), self.logdet(alpha),
                                   self.size)

    def not_positive(self, alpha) -> int:
        return int((self.eigenvalues(alpha) <= 0).sum())

    def root(self, alpha):
        return torch.kron(self.q1, self.q2) * self.eigenvalues(alpha).rsqrt().reshape(-1)

    def state(self, alpha):
        return {"q1": self.q1.float(), "q2": self.q2.float(), "eigenvalues": self.eigenvalues(alpha).float()}


class LowRank:
    """``U diag(s) U^T + diag(c)``, ``c = alpha d + e``: the data's curvature kept to its top eigenpairs,
    ``e`` the diagonal they leave out (and the other priors' curvature's). Woodbury and the matrix determinant
    lemma keep every operation at (size x rank)."""

    def __init__(self, u: torch.Tensor, s: torch.Tensor, e: torch.Tensor, d: torch.Tensor):
        self.u, self.s, self.e, self.d, self.size = u.double(), s.double(), e.double(), d.double(), d.numel()

    def _parts(self, alpha):
        c = alpha * self.d + self.e
        w = self.u * self.s.sqrt() / c.sqrt()[:, None]  # C^-1/2 U S^1/2
        return c, w

    def logdet(self, alpha):
        c, w = self._parts(alpha)
        if bool((c <= 0).any()):
            return None
        inner = torch.eye(w.shape[1], dtype=w.dtype, device=w.device) + w.T @ w
        return float(c.log().sum() + torch.linalg.slogdet(inner)[1])

    def variances(self, alpha):
        c, w = self._parts(alpha)
        inner = torch.eye(w.shape[1], dtype=w.dtype, device=w.device) + w.T @ w
        # (C + U S U^T)^-1 = C^-1/2 (I - W (I + W^T W)^-1 W^T) C^-1/2
        return (1 - ((w @ torch.linalg.inv(inner)) * w).sum(-1)) / c

    def sample_map(self, alpha):
        """Rows of standard normal noise -> rows with this covariance."""
        c, w = self._parts(alpha)
        q, sigma, _ = torch.linalg.svd(w, full_matrices=False)
        # (I + W W^T)^-1/2 = I + Q ((1 + sigma^2)^-1/2 - 1) Q^T
        return lambda eps: (eps + ((eps @ q) * ((1 + sigma**2).rsqrt() - 1)) @ q.T) / c.sqrt()

    def sample(self, num, alpha):
        return self.sample_map(alpha)(torch.randn(num, self.size, dtype=torch.float64, device=self.d.device))

    def log_density(self, x, alpha):
        c, _ = self._parts(alpha)
        quad = (x**2 * c).sum(-1) + ((x @ self.u) ** 2 * self.s).sum(-1)
        return _normal_log_density(quad, self.logdet(alpha), self.size)

    def not_positive(self, alpha) -> int:
        return int((alpha * self.d + self.e <= 0).sum())

    def root(self, alpha):
        return self.sample_map(alpha)(torch.eye(self.size, dtype=self.u.dtype, device=self.u.device)).T

    def state(self, alpha):
        return {"u": self.u.float(), "s": self.s.float(), "c": (alpha * self.d + self.e).float()}


class Blocks:
    """Block-diagonal: each part a structure over its own coordinates (positions into the subset)."""

    def __init__(self, parts: list[tuple[torch.Tensor, object]], size: int, tied=()):
        self.parts, self.size = parts, size
        self.tied = list(tied)  # coordinates that must share one alpha (a Kronecker block's eigenbasis needs it)

    def logdet(self, alpha):
        total = 0.0
        for pos, part in self.parts:
            value = part.logdet(alpha[pos])
            if value is None:
                return None
            total += value
        return total

    def variances(self, alpha):
        out = torch.empty(self.size, dtype=torch.float64, device=alpha.device)
        for pos, part in self.parts:
            out[pos] = part.variances(alpha[pos])
        return out

    def sample(self, num, alpha):
        out = torch.empty(num, self.size, dtype=torch.float64, device=alpha.device)
        for pos, part in self.parts:
            out[:, pos] = part.sample(num, alpha[pos])
        return out

    def log_density(self, x, alpha):
        return sum(part.log_density(x[:, pos], alpha[pos]) for pos, part in self.parts)

    def not_positive(self, alpha) -> int:
        return sum(part.not_positive(alpha[pos]) for pos, part in self.parts)

    def root(self, alpha):
        out = torch.zeros(self.size, self.size, dtype=torch.float64, device=alpha.device)
        for pos, part in self.parts:
            out[pos[:, None], pos[None, :]] = part.root(alpha[pos])
        return out

    def state(self, alpha):
        out = {}
        for k, (pos, part) in enumerate(self.parts):
            out[f"block{k}.positions"] = pos
            out.update({f"block{k}.{name}": value for name, value in part.state(alpha[pos]).items()})
        return out


def _normal_log_density(quad, logdet, size):
    return 0.5 * (logdet - quad - size * math.log(2 * math.pi))


def nystrom(sketch: torch.Tensor, probes: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``rank`` eigenpairs of a positive semi-definite H from ``sketch = H @ probes`` (one pass over the
    data; orthonormal probes), by the stabilised Nystrom approximation of Tropp et al. 2017."""
    shift = torch.finfo(sketch.dtype).eps * float(sketch.norm())
    shifted = sketch + shift * probes
    core = probes.T @ shifted
    chol = torch.linalg.cholesky((core + core.T) / 2)
    b = torch.linalg.solve_triangular(chol, shifted.T, upper=False).T  # Y C^-T
    u, sigma, _ = torch.linalg.svd(b, full_matrices=False)
    return u[:, :rank], (sigma[:rank] ** 2 - shift).clamp_min(0)
