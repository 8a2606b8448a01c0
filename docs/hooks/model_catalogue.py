"""mkdocs hook: the model catalogue page, written from the registry's cards at build time (one source)."""

from mkdocs.structure.files import File


def _catalogue() -> str:
    import zoo

    lines = ["# Model catalogue", "",
             "Every registered model, from its card (`zoo.card(name)`); `zoo list` prints the same.", "",
             "| model | task | family | likelihood | guides (default) | backends |", "|---|---|---|---|---|---|"]
    for name in zoo.list_models():
        card = zoo.card(name)
        guides = ", ".join(card.guides) or card.default_guide
        backends = ", ".join(card.backends) + "".join(f"; refuses {b}: {why}" for b, why in card.refused.items())
        cells = [f"`{name}`", card.task, card.family, card.likelihood.replace("|", "\\|"),
                 f"{guides} ({card.default_guide})", backends.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def on_files(files, config):
    files.append(File.generated(config, "models/index.md", content=_catalogue()))
    return files
