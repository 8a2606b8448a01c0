"""Errors a user can act on: each says which argument was wrong, what was expected, what to do."""

from __future__ import annotations

import difflib


class ZooError(ValueError):
    """A problem with what the user asked for (bad name, bad data, bad option)."""


class NonFiniteLossError(ZooError):
    """The objective became NaN or infinite; the fit stopped and kept its last finite state."""

    def __init__(self, message: str, posterior=None):
        super().__init__(message)
        self.posterior = posterior


class ZooWarning(UserWarning):
    """Something about a fit the user should look at (an unconverged MAP, an interrupted run, data on
    another scale than the priors assume)."""


class DiagnosticWarning(ZooWarning):
    """What ``post.diagnose()`` warns of (R-hat, ESS, divergences, a collapsed step size, the k-hat), raised
    by ``zoo.fit`` so that it is seen where the posterior is made."""


def unknown_name(kind: str, name: str, known, known_as: str | None = None) -> ZooError:
    """An error for an unknown registry name that lists close matches and every option."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    known_as = known_as or f"Known {kind}s"
    return ZooError(f"unknown {kind} {name!r}.{hint} {known_as}: {', '.join(known)}.")
