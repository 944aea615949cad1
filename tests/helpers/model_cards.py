"""Reading what the exports write, for the tests that check it."""

from __future__ import annotations

import yaml


def parse_front_matter(card: str) -> dict:
    """The YAML front matter of a model card as a dict."""
    if not card.startswith("---\n"):
        raise ValueError("model card does not start with '---' front matter")
    end = card.index("\n---", 4)
    return yaml.safe_load(card[4:end])
