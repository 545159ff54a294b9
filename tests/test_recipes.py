"""docs/recipes.md against the configs: every full-scale experiment has a recipe card, every card has every
recipe item, and every row's vtrain column holds for the composed experiment, so that a card and its
config cannot drift apart.

A card is a `## <experiment>` section whose table has the columns
`| item | paper / official | source | vtrain | note |`. Its vtrain cell holds one or more assertions in
backticks: `key = value` (the composed config's value at `key`, written in YAML; floats compared to 1e-9
of their scale) or `check:NAME` (a named check of behaviour in tests/recipe_checks/)."""

from __future__ import annotations

import copy
import functools
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from tests.recipe_checks import load_all
from vtrain.config import config_dir, register_resolvers

REPO = Path(__file__).resolve().parents[1]
CARDS = REPO / "docs" / "recipes.md"
COLUMNS = ["item", "paper / official", "source", "vtrain", "note"]

# The recipe items every card has a row for, in this order of first appearance; a card may add rows of its
# own (loss weights, pretrained inputs, ...). An item the paper does not use is still a row ("none").
REQUIRED_ITEMS = [
    "model",
    "input size",
    "pretrained inputs",
    "optimizer",
    "learning rate",
    "LR rule",
    "global batch",
    "weight decay",
    "schedule",
    "warm-up",
    "length",
    "augmentation",
    "regularisation",
    "EMA",
    "clipping",
    "precision",
    "evaluation",
    "selection",
    "expected number",
]

# Experiments that are not a paper's full-scale recipe, and why they have no card.
NO_CARD = {
    "detr_finetune_custom": "fine-tuning on a user's own data set: no paper recipe to follow",
    "lambda_resnet26_cifar10": "vtrain's own CIFAR recipe: the LambdaNetworks paper has no CIFAR experiment",
    "mae_tiny_finetune": "mae_vit_b16_finetune sized for a CPU (after mae_tiny_cifar10): no paper recipe",
    "mae_tiny_cifar10": "mae_tiny on the tiny CIFAR-10-format set, for mae_tiny_finetune: no paper recipe",
}


ASSERTION = re.compile(r"`([^`]+)`")


def parse_cards(text: str) -> dict[str, list[dict[str, str]]]:
    """{experiment: [row as {column: cell}]} from the card file's `## name` sections and their tables."""
    cards: dict[str, list[dict[str, str]]] = {}
    name = None
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            name = line[3:].split()[0].strip("`")
            if name in cards:
                raise AssertionError(f"{CARDS}:{number}: a second card for {name}")
            cards[name] = []
        elif name and line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if cells[0] == "item" or set(cells[0]) <= set("-: "):
                if cells[0] == "item" and cells != COLUMNS:
                    raise AssertionError(f"{CARDS}:{number}: columns {cells}, expected {COLUMNS}")
                continue
            if len(cells) != len(COLUMNS):
                raise AssertionError(f"{CARDS}:{number}: {len(cells)} cells, expected {len(COLUMNS)}: {line}")
            cards[name].append(dict(zip(COLUMNS, cells, strict=True)) | {"line": str(number)})
    return cards


@functools.cache
def cards() -> dict[str, list[dict[str, str]]]:
    return parse_cards(CARDS.read_text())


def full_scale_experiments() -> list[str]:
    names = sorted(path.stem for path in (config_dir() / "experiment").glob("*.yaml"))
    return [name for name in names if not name.endswith("_tiny") and name not in NO_CARD]


@functools.cache
def composed(experiment: str) -> DictConfig:
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    GlobalHydra.instance().clear()
    return cfg


def parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 as a string; OmegaConf reads it as a float
        except ValueError:
            return value
    return value


def same(found: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(found, bool):
        return found is expected
    if isinstance(expected, int | float) and isinstance(found, int | float):
        return math.isclose(found, expected, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(expected, list) and isinstance(found, list):
        return len(found) == len(expected) and all(same(f, e) for f, e in zip(found, expected, strict=True))
    if isinstance(expected, dict) and isinstance(found, dict):
        return found.keys() == expected.keys() and all(same(found[k], expected[k]) for k in expected)
    return found == expected


def check_row(cfg: DictConfig, row: dict[str, str]) -> list[str]:
    """The row's failed assertions, each as a sentence naming the card line."""
    where = f"{CARDS.name}:{row['line']} ({row['item']})"
    assertions = ASSERTION.findall(row["vtrain"])
    if not assertions:
        return [f"{where}: the vtrain cell {row['vtrain']!r} asserts nothing (`key = value` or `check:NAME`)"]
    failures = []
    checks = load_all()
    for assertion in assertions:
        if assertion.startswith("check:"):
            name = assertion.removeprefix("check:")
            if name not in checks:
                failures.append(f"{where}: no recipe check named {name!r} in tests/recipe_checks/")
                continue
            try:
                checks[name](copy.deepcopy(cfg))
            except AssertionError as error:
                failures.append(f"{where}: check:{name} failed: {error}")
            continue
        key, separator, text = assertion.partition("=")
        if not separator:
            failures.append(f"{where}: {assertion!r} is neither `key = value` nor `check:NAME`")
            continue
        key, expected = key.strip(), parse_value(text.strip())
        found = OmegaConf.select(cfg, key, default="<absent>")
        if isinstance(found, DictConfig | type(OmegaConf.create([]))):
            found = OmegaConf.to_container(found, resolve=True)
        if not same(found, expected):
            failures.append(f"{where}: {key} is {found!r} in the composed config, the card says {expected!r}")
    return failures


def test_every_full_scale_experiment_has_a_card():
    missing = [name for name in full_scale_experiments() if name not in cards()]
    assert not missing, f"no recipe card in {CARDS} for {missing} (or list them in NO_CARD with the reason)"
    unknown = sorted(cards().keys() - set(full_scale_experiments()))
    assert not unknown, f"cards for {unknown}, which are not full-scale experiments in conf/experiment/"


@pytest.mark.parametrize("experiment", sorted(cards()))
def test_card_has_every_recipe_item(experiment):
    items = [row["item"] for row in cards()[experiment]]
    missing = [item for item in REQUIRED_ITEMS if item not in items]
    assert not missing, f"the {experiment} card has no row for {missing}"


@pytest.mark.parametrize("experiment", sorted(cards()))
def test_card_matches_the_composed_config(experiment):
    cfg = composed(experiment)
    failures = [failure for row in cards()[experiment] for failure in check_row(cfg, row)]
    assert not failures, "\n".join(failures)


def test_the_card_parser_reads_assertions_and_reports_drift():
    text = "\n".join(
        [
            "## demo",
            "| item | paper / official | source | vtrain | note |",
            "|---|---|---|---|---|",
            "| weight decay | 0.05 | DeiT main.py | `task.weight_decay = 0.05` | |",
            "| length | 300 epochs | DeiT | `trainer.max_epochs = 299` | |",
            "| EMA | none | DeiT | none | |",
        ]
    )
    rows = parse_cards(text)["demo"]
    cfg = OmegaConf.create({"task": {"weight_decay": 0.05}, "trainer": {"max_epochs": 300}})
    assert check_row(cfg, rows[0]) == []
    assert "trainer.max_epochs is 300" in check_row(cfg, rows[1])[0]
    assert "asserts nothing" in check_row(cfg, rows[2])[0]
