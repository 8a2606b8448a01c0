"""ModelCard: what a registered model is, readable without building it."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("regression", "classification", "generative", "custom")
BACKENDS = ("svi", "laplace", "nuts")


@dataclass(frozen=True)
class ModelCard:
    name: str
    family: str
    task: str
    likelihood: str
    default_guide: str
    guides: tuple[str, ...] = ()
    backends: tuple[str, ...] = BACKENDS
    refused: dict[str, str] = field(default_factory=dict)  # backend -> one-line reason
    paper: str = ""
    notes: str = ""

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"card {self.name!r}: task must be one of {TASKS}, got {self.task!r}")
        unknown = set(self.backends) | set(self.refused)
        if not unknown <= set(BACKENDS):
            raise ValueError(f"card {self.name!r}: backends must be among {BACKENDS}")
        if set(self.backends) & set(self.refused):
            raise ValueError(f"card {self.name!r}: a backend cannot be both supported and refused")

    def describe(self) -> str:
        lines = [
            f"{self.name}  ({self.family}, {self.task})",
            f"  likelihood: {self.likelihood}",
            f"  guides:     {', '.join(self.guides) or self.default_guide} (default {self.default_guide})",
            f"  backends:   {', '.join(self.backends)}",
        ]
        lines += [f"  refuses {b}: {why}" for b, why in self.refused.items()]
        if self.paper:
            lines.append(f"  paper:      {self.paper}")
        if self.notes:
            lines.append(f"  notes:      {self.notes}")
        return "\n".join(lines)
