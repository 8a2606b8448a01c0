import numpy as np
import pytest
import torch

from zoo import plots
from zoo._errors import ZooError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC)


def test_reliability_diagram_writes_png(tmp_path):
    gen = torch.Generator().manual_seed(0)
    probs = torch.randn(100, 3, generator=gen).softmax(-1)
    y = torch.randint(0, 3, (100,), generator=gen)
    out = plots.reliability_diagram(probs, y, tmp_path / "rel.png", n_bins=5, title="test")
    assert out == tmp_path / "rel.png" and _is_png(out)
    draws = torch.randn(4, 100, 3, generator=gen).softmax(-1)  # (draws, points, classes) is averaged
    assert _is_png(plots.reliability_diagram(draws, y, tmp_path / "rel_draws.png"))


def test_image_grid_writes_png(tmp_path):
    images = torch.rand(10, 1, 8, 8)
    titles = [f"{i} (H={0.1 * i:.1f})" for i in range(10)]
    out = plots.image_grid(images, tmp_path / "grid.png", titles=titles, ncols=4)
    assert out == tmp_path / "grid.png" and _is_png(out)
    assert _is_png(plots.image_grid(np.random.rand(3, 8, 8), tmp_path / "grid3.png", ncols=8))


def test_image_grid_bad_input(tmp_path):
    with pytest.raises(ZooError, match="one title per image"):
        plots.image_grid(torch.rand(3, 8, 8), tmp_path / "x.png", titles=["a"])
    with pytest.raises(ZooError, match="shaped"):
        plots.image_grid(torch.rand(3, 3, 8, 8), tmp_path / "x.png")
