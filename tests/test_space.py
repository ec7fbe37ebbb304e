"""One way to declare a search space: choices declared once, sampled, enumerated and validated by
the base class; every shipped YAML loads; the package's layering rules hold in the source."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import yaml

from autoprompt_kit.errors import AutoPromptError
from autoprompt_kit.methods import AutoPromptConfig, KPTConfig, ProtoVerbConfig
from autoprompt_kit.search import REGISTRY, get_searcher
from autoprompt_kit.search.base import SearchConfig, choice
from autoprompt_kit.search._runner import fill_queue

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autoprompt_kit"
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))
WORDS = {"negative": ["bad"], "positive": ["good"]}


@dataclass
class _Toy(SearchConfig):
    size: list[int] = choice([1, 2, 3], help="sizes")
    words: list[dict] = choice([{"a": "x"}, {"a": "y"}], help="mappings go by their readable form")
    mode: list[str] = choice(["plain", "odd"], help="modes")

    def valid_point(self, point):
        return not (point["mode"] == "odd" and point["size"] == 2)

    def check_point(self, point):
        if point["size"] == 3 and point["words"] == {"a": "z"} and point["mode"] == "odd":
            raise AutoPromptError("size 3 with z cannot be odd")


def test_the_base_class_enumerates_encodes_and_samples_the_declared_choices():
    toy = _Toy(words=[{"a": "x"}, {"a": "y"}])
    grid = toy.grid()
    assert len(grid) == 3 * 2 * 2 - 2  # (odd, 2) excluded for both word sets
    assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid)
    assert {p["words"] for p in grid} == {"x", "y"}  # Optuna stores plain values; mappings by their readable form
    study = optuna.create_study()
    fill_queue(study, grid, len(grid), seed=0)
    seen = []
    for _ in grid:
        trial = study.ask()
        seen.append(json.dumps(toy.sample(trial), sort_keys=True))
        study.tell(trial, 0.0)
    assert len(set(seen)) == len(grid) and {"a": "y"} in [json.loads(s)["words"] for s in seen]
    # The toy never calls check_points(): the base class validates every point when it is built.
    with pytest.raises(AutoPromptError, match="size 3 with z cannot be odd"):
        _Toy(words=[{"a": "x"}, {"a": "z"}])


@dataclass
class _Forgetful(_Toy):
    """A subclass whose own ``__post_init__`` neither validates nor calls its parent's."""

    def __post_init__(self):
        self.post_init_ran = True


@dataclass
class _Chained(_Forgetful):
    """Validation runs once, after the outermost ``__post_init__`` (not half-way, in the parent's)."""

    def __post_init__(self):
        super().__post_init__()
        self.words = [{"a": "x"}]  # changed after the parent's __post_init__: the valid value is what gets checked


def test_a_config_that_forgets_to_validate_is_validated_after_its_post_init():
    assert _Forgetful().post_init_ran
    with pytest.raises(AutoPromptError, match="size 3 with z cannot be odd"):
        _Forgetful(words=[{"a": "z"}])
    with pytest.raises(AutoPromptError, match="no valid combination"):
        _Forgetful(size=[])
    assert _Chained(words=[{"a": "z"}]).words == [{"a": "x"}]


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_registered_config_is_validated_when_built(path, monkeypatch):
    method = yaml.safe_load(path.read_text(encoding="utf-8"))["method"]
    cls = get_searcher(method).config_class
    cls.from_yaml(path)
    monkeypatch.setattr(cls, "valid_point", lambda self, point: False)
    with pytest.raises(AutoPromptError, match="no valid combination"):
        cls.from_yaml(path)


def test_every_registered_method_has_a_shipped_space():
    assert set(REGISTRY) <= {yaml.safe_load(p.read_text(encoding="utf-8"))["method"] for p in SPACES}


@pytest.mark.parametrize("config", [
    AutoPromptConfig(label_words=WORDS, num_triggers=[2, 3], num_candidates=[5, 10], loss=["likelihood", "cross_entropy"]),
    KPTConfig(seed_words=WORDS, sources=["wordnet"], depth=[1, 2], calibration=["contextual", "none"],
              aggregation=["mean", "max"]),
    ProtoVerbConfig(label_words=WORDS, proj_dim=[32, 64], prototypes_per_class=[1, 2]),
], ids=["autoprompt", "kpt", "protoverb"])
def test_methods_with_list_settings_have_a_grid_without_repeats(config):
    searcher = get_searcher(config.__class__.__name__.removesuffix("Config").lower())(config)
    grid = searcher.grid()
    sizes = [len(v) for v in config.axes().values()]
    expected = 1
    for n in sizes:
        expected *= n
    assert grid is not None and len(grid) == expected == 8
    assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid)


def test_every_combination_is_validated_when_the_space_loads():
    with pytest.raises(AutoPromptError, match="prior_cut"):
        KPTConfig(seed_words=WORDS, prior_cut=[0.5, 1.5])
    with pytest.raises(AutoPromptError, match="proj_dim|positive|at least"):
        ProtoVerbConfig(label_words=WORDS, proj_dim=[64, 0])


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_shipped_space_loads_and_its_grid_has_no_repeats(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    searcher = get_searcher(data["method"])
    config = searcher.config_class.from_yaml(path)
    grid = searcher(config).grid()
    if data["method"] == "lmbff":  # its grid is the generated templates: empty until the study prepares them
        assert grid == []
    elif grid is not None:  # None: S3Delta's blackbox strategy samples structures with TPE
        assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid) > 0


def test_a_typo_in_a_space_is_an_error_with_a_suggestion_and_a_saved_config_only_warns(caplog):
    with pytest.raises(AutoPromptError, match="did you mean 'num_candidates'"):
        AutoPromptConfig.from_dict({"label_words": WORDS, "num_candidate": [5]})
    config = AutoPromptConfig.from_dict({"label_words": WORDS, "from_a_newer_version": 1}, strict=False)
    assert config.num_candidates == [10] and "from_a_newer_version" in caplog.text


def _sources(folder: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in folder.rglob("*.py")}


def test_search_never_imports_methods():
    pattern = re.compile(r"import.*methods|from \.\.methods|from \.\. import methods")
    hits = [f"{p}:{n}" for p, text in _sources(PACKAGE / "search").items()
            for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_nothing_outside_methods_imports_a_method():
    """Shared code lives outside ``methods/`` (vocabulary, demonstrations, deltas, trained-state kinds);
    only the package ``__init__`` imports ``methods`` itself, to register the built-ins."""
    pattern = re.compile(r"(import|from)\s+\S*methods\.\w+|from \.+methods import")
    hits = [f"{p}:{n}" for p, text in _sources(PACKAGE).items() if p.relative_to(PACKAGE).parts[0] != "methods"
            for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, hits


def test_no_method_imports_another_methods_modules():
    """A method may call another's public functions through its package (``auto`` composes them),
    never reach into its modules: helpers two methods need are shared outside ``methods/``."""
    methods = PACKAGE / "methods"
    hits = [f"{p}:{n}" for p, text in _sources(methods).items()
            for n, line in enumerate(text.splitlines(), 1) if re.search(r"from \.\.\w+\.\w+ import", line)]
    assert not hits, hits


def test_methods_declare_choices_instead_of_calling_optuna():
    hits = [f"{p}:{n}" for p, text in _sources(PACKAGE / "methods").items()
            for n, line in enumerate(text.splitlines(), 1) if "suggest_categorical" in line]
    assert not hits, hits


def test_nothing_outside_the_harness_touches_its_private_names():
    hits = [f"{p}:{n}" for p, text in _sources(PACKAGE).items() if "harness" not in p.relative_to(PACKAGE).parts[:1]
            for n, line in enumerate(text.splitlines(), 1) if re.search(r"harness\._", line)]
    assert not hits, hits


def test_every_registered_method_is_listed():
    assert {"select", "autoprompt", "lmbff", "demos", "kpt", "protoverb", "s3delta"} <= set(REGISTRY)
