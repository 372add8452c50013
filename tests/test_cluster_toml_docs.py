"""docs/cluster-toml.md documents exactly the keys the cluster TOML loader accepts.

The keys, their types, defaults and allowed choices are read from the loader itself: the
``known`` sets it hands to ``Settings.reject_unknown`` and the accessor (``number``, ``choice``,
``flag``, ...) it calls for each key, recorded while it loads a cluster with every table present.
A key added to ``replay/config.py`` (or to ``DynamoConfig`` / ``PolcaConfig``) without a row in
the page fails here, as does a row for a key the loader refuses, a default or a choice list that
drifted, or a range bound the page no longer states.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from replay import config as cluster_config
from toolkit.validation import Settings

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cluster-toml.md"
README = ROOT / "README.md"
SECTIONS = {"top": "Top level", "pool": "`[[pool]]`", "dynamollm": "`[dynamollm]`", "polca": "`[polca]`"}
COLUMNS = ["key", "type", "default", "unit", "allowed", "meaning"]
# What the page's type column says for each loader accessor (the accessor is how the key is read).
TYPE_WORDS = {"number_int": "integer", "number": "number", "numbers_int": "array of integers",
              "numbers": "array of numbers", "text": "string", "choice": "string", "flag": "boolean",
              "table": "table", "tables": "array of tables"}


def _section(where: str) -> str:
    """The page section of a Settings path: "" -> top, "pool[0]" -> pool, "polca" -> polca."""
    return re.sub(r"\[\d+\]$", "", where) or "top"


@pytest.fixture(scope="module")
def loader() -> dict:
    """What the loader accepts and how it reads each key, recorded while it loads a cluster with
    one pool and both policy tables: {section: {"known": set, "reads": {key: (accessor, rules)}}},
    and the loaded config (its values are the defaults a TOML gets for absent keys)."""
    seen: dict[str, dict] = {}
    originals = {}

    def entry(settings: Settings) -> dict:
        return seen.setdefault(_section(settings.where), {"known": None, "reads": {}})

    def wrap(method: str):
        original = getattr(Settings, method)
        originals[method] = original

        def recorded(self, name, *args, **kwargs):
            if method == "choice":
                rules = {"choices": tuple(args[0] if args else kwargs["choices"])}
            else:
                rules = {k: v for k, v in kwargs.items() if k != "known"}
            kind = f"{method}_int" if method in ("number", "numbers") and rules.get("integer") else method
            entry(self)["reads"][name] = (kind, rules)
            return original(self, name, *args, **kwargs)
        return recorded

    def reject_unknown(self, known):
        entry(self)["known"] = set(known)
        return originals["reject_unknown"](self, known)

    mp = pytest.MonkeyPatch()
    try:
        for method in ("number", "numbers", "text", "choice", "flag", "table", "tables"):
            mp.setattr(Settings, method, wrap(method))
        originals["reject_unknown"] = Settings.reject_unknown
        mp.setattr(Settings, "reject_unknown", reject_unknown)
        config = cluster_config.cluster_from_dict({"pool": [{}], "dynamollm": {}, "polca": {"budget_w": 1000.0}}, "t.toml")
    finally:
        mp.undo()
    assert set(seen) == set(SECTIONS), f"the loader reads tables {sorted(seen)}; this test knows {sorted(SECTIONS)}"
    defaults = cluster_config.cluster_from_dict({}, "t.toml")  # every key absent
    return {"sections": seen, "config": config, "defaults": defaults}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def page() -> dict[str, dict[str, dict[str, str]]]:
    """{section: {key: {column: cell}}} from the page's tables, in the sections of SECTIONS."""
    assert PAGE.exists(), "docs/cluster-toml.md is missing"
    text = PAGE.read_text(encoding="utf-8")
    tables: dict[str, dict[str, dict[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            current = next((s for s, title in SECTIONS.items() if heading == title), None)
            if current is not None:
                assert current not in tables, f"two sections titled {heading!r}"
                tables[current] = {}
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = _cells(line)
        if cells[0] == "key":
            assert cells == COLUMNS, f"section {SECTIONS[current]}: columns {cells}, expected {COLUMNS}"
            continue
        if set(cells[0]) <= {"-", " "}:
            continue
        match = re.fullmatch(r"`([a-z0-9_]+)`", cells[0])
        assert match, f"section {SECTIONS[current]}: first cell {cells[0]!r} is not a `key`"
        assert len(cells) == len(COLUMNS), f"{cells[0]}: {len(cells)} cells, expected {len(COLUMNS)}"
        assert match.group(1) not in tables[current], f"{cells[0]} documented twice in {SECTIONS[current]}"
        tables[current][match.group(1)] = dict(zip(COLUMNS, cells))
    missing = [title for s, title in SECTIONS.items() if s not in tables]
    assert not missing, f"docs/cluster-toml.md lacks the sections {missing} (headings '## <title>')"
    return tables


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_accepted_key_is_documented_and_every_documented_key_accepted(loader, page, section):
    known = loader["sections"][section]["known"]
    documented = set(page[section])
    assert known - documented == set(), f"[{section}] keys the loader accepts but docs/cluster-toml.md lacks"
    assert documented - known == set(), f"[{section}] keys docs/cluster-toml.md lists but the loader refuses"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_accepted_key_is_read(loader, section):
    """A key in the known set that no accessor reads would be accepted and silently ignored."""
    entry = loader["sections"][section]
    assert entry["known"] == set(entry["reads"]), (
        f"[{section}] accepted but never read: {sorted(entry['known'] - set(entry['reads']))}; "
        f"read but refused as unknown: {sorted(set(entry['reads']) - entry['known'])}")


@pytest.mark.parametrize("section", list(SECTIONS))
def test_types_match_the_loader(loader, page, section):
    wrong = {}
    for key, (kind, _) in loader["sections"][section]["reads"].items():
        if key not in page[section]:
            continue  # (reported by the first test)
        cell = page[section][key]["type"]
        if not cell.startswith(TYPE_WORDS[kind]):
            wrong[key] = (cell, TYPE_WORDS[kind])
    assert not wrong, f"[{section}] type column vs how the loader reads the key: {wrong}"


@pytest.mark.parametrize("section", list(SECTIONS))
def test_choices_match_the_loader(loader, page, section):
    wrong = {}
    for key, (kind, rules) in loader["sections"][section]["reads"].items():
        if key not in page[section]:
            continue
        listed = re.findall(r'`"([^"`]+)"`', page[section][key]["allowed"])
        if kind == "choice" and sorted(listed) != sorted(rules["choices"]):
            wrong[key] = (listed, list(rules["choices"]))
        if kind == "flag" and page[section][key]["allowed"] != "`true`, `false`":
            wrong[key] = (page[section][key]["allowed"], "`true`, `false`")
    assert not wrong, f"[{section}] allowed values (page, loader): {wrong}"


def _effective_default(loader, section: str, key: str):
    """What a TOML that leaves ``key`` out gets (None: unset, computed later)."""
    config = loader["defaults"]
    if section == "top":
        return getattr(config, key, None)
    if section == "pool":
        return getattr(config.pools[0], key)
    return getattr(config, section).get(key)


@pytest.mark.parametrize("section", list(SECTIONS))
def test_defaults_match_the_loader(loader, page, section):
    """A default cell is a TOML literal in backticks (compared with what the loader fills in), or
    starts with "unset" (the loader leaves the value None and decides later); tables describe theirs."""
    wrong = {}
    for key, row in page[section].items():
        if key not in loader["sections"][section]["reads"]:
            continue
        kind = loader["sections"][section]["reads"][key][0]
        cell = row["default"]
        if kind in ("table", "tables"):
            continue
        actual = _effective_default(loader, section, key)
        literal = re.fullmatch(r"`([^`]+)`", cell)
        if literal:
            expected = tomllib.loads(f"v = {literal.group(1)}")["v"]
            if isinstance(actual, tuple):
                actual = list(actual)
            same = (expected == actual if not isinstance(expected, float) or not isinstance(actual, (int, float))
                    else math.isclose(expected, actual, rel_tol=1e-12))
            if not same or type(expected) is bool and type(actual) is not bool:
                wrong[key] = (cell, actual)
        elif cell.startswith("unset"):
            if actual is not None:
                wrong[key] = (cell, actual)
        else:
            wrong[key] = (cell, "a `literal` or 'unset: ...' expected")
    assert not wrong, f"[{section}] default column (page, loader): {wrong}"


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*(?:\.\d+)?(?:e-?\d+)?", text)]


@pytest.mark.parametrize("section", list(SECTIONS))
def test_range_bounds_are_stated(loader, page, section):
    """Each numeric bound the loader enforces appears in the allowed column (an exclusive minimum
    written "> m"): the page cannot keep a range the code has changed."""
    wrong = {}
    for key, (kind, rules) in loader["sections"][section]["reads"].items():
        if kind not in ("number", "number_int", "numbers", "numbers_int") or key not in page[section]:
            continue
        cell = page[section][key]["allowed"]
        stated = _numbers(cell)
        for bound in ("minimum", "maximum"):
            value = rules.get(bound)
            if value is not None and not any(math.isclose(value, n, rel_tol=1e-12) for n in stated):
                wrong.setdefault(key, []).append(f"{bound} {value:g} not in {cell!r}")
        if rules.get("exclusive_minimum") and not re.search(rf">\s*{rules['minimum']:g}\b", cell):
            wrong.setdefault(key, []).append(f"exclusive minimum: write '> {rules['minimum']:g}'")
        for length in ("min_length", "max_length"):
            if rules.get(length) and not any(n == rules[length] for n in stated):
                wrong.setdefault(key, []).append(f"{length} {rules[length]} not stated")
    assert not wrong, f"[{section}] allowed column vs the loader's bounds: {wrong}"


def test_the_pages_toml_examples_load(tmp_path):
    examples = re.findall(r"^```toml\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert examples, "the page shows no ```toml example"
    for i, text in enumerate(examples):
        path = tmp_path / f"example{i}.toml"
        path.write_text(text)
        cluster_config.load_cluster(path)  # raises a one-line InputError if the page's example is wrong


def test_readme_links_the_page_and_names_every_router():
    readme = README.read_text(encoding="utf-8")
    assert "(docs/cluster-toml.md" in readme, "README.md must link docs/cluster-toml.md"
    missing = [r for r in cluster_config.ROUTERS if f"`{r}`" not in readme]
    assert not missing, f"README.md's routing description lacks {missing}"
    assert "JSQ or round robin" not in readme
