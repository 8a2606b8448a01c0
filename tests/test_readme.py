"""The README's and the getting-started guide's Python examples run as printed."""

import re
import warnings
from pathlib import Path

import pytest

import zoo

ROOT = Path(__file__).resolve().parent.parent
# the guide fits a 50-unit network with every backend on boston (minutes), the Laplace page its default fit
# of a 20-unit one on yacht (20-50 s), the active-learning page six small fits, the site's home page a Laplace
# fit, the networks page a CNN on 2,000 digits, the ArviZ and uncertainty pages NUTS and LeNet fits: slow
DOCS = ["README.md", *(pytest.param(doc, marks=pytest.mark.slow) for doc in ("docs/getting-started.md",
                                                                           "docs/laplace.md", "docs/active.md",
                                                                           "docs/index.md", "docs/networks.md",
                                                                           "docs/arviz.md", "docs/uncertainty.md"))]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run_as_printed(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples save to runs/...
    import matplotlib

    matplotlib.use("Agg")
    namespace = {}
    registered = set(zoo.list_models())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # short example fits warn (unconverged MAP, few draws): not the topic
            for block in _blocks(ROOT / doc):
                exec(compile(block, f"{doc} example", "exec"), namespace)
    finally:
        for name in set(zoo.list_models()) - registered:
            zoo.unregister_model(name)
    assert namespace, f"{doc} has no Python example"
