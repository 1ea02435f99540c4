"""``edgevla search``: candidates built over one recipe, a failed one recorded, the built compared, a pick."""

from __future__ import annotations

import json

import pytest

from edgevla.cli import main
from edgevla.errors import EdgevlaError
from edgevla.search import candidate_overrides, search, slug

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("candidate, overrides", [
    ("2:4+w8a8", {"prune.method": "nm", "prune.pattern": "2:4", "quantize.format": "w8a8"}),
    ("W8A8", {"quantize.format": "w8a8"}),
    ("structured:0.3:blocks", {"prune.method": "structured", "prune.amount": 0.3, "prune.structure": "blocks"}),
])
def test_candidates_are_the_build_flags_shorthands(candidate, overrides):
    assert candidate_overrides(candidate).items() >= overrides.items()


@pytest.mark.parametrize("candidate, message", [
    ("2:4+", "expected PRUNE, FORMAT or PRUNE+FORMAT"),
    ("w8a8+fp16", "one pruning and one quantization format at most"),
    ("2:4+4:8", "one pruning and one quantization format at most"),
    ("3:4", "search candidate '3:4'"),
])
def test_bad_candidates_are_refused(candidate, message):
    with pytest.raises(EdgevlaError, match=message.replace("+", r"\+")):
        candidate_overrides(candidate)


def test_refusals_come_before_any_build(tmp_path, fast):
    with pytest.raises(EdgevlaError, match="listed twice"):
        search("jetson-orin", ["w8a8", "w8a8"], tmp_path / "s", overrides=fast)
    with pytest.raises(EdgevlaError, match="evaluate.episodes"):
        search("jetson-orin", ["w8a8"], tmp_path / "s", overrides={"evaluate.episodes": 0})
    with pytest.raises(EdgevlaError, match="unknown target"):
        search("no-such-board", ["w8a8"], tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_search_builds_compares_and_picks(tmp_path, fast):
    out = tmp_path / "search"
    # The second candidate cannot keep its success without recovery: its gate fails, and the search goes on.
    data = search("jetson-orin", ["w8a8", "unstructured:0.97", "2:4+w8a8"], out,
                  overrides={**fast, "prune.recovery.max_steps": 0}, tolerate=("async", 1))
    records = {r["candidate"]: r for r in data["candidates"]}
    assert records["w8a8"]["bundle"] == str((out / "w8a8").absolute())
    assert records["unstructured:0.97"]["bundle"] is None and "success" in records["unstructured:0.97"]["error"]
    assert records["2:4+w8a8"]["bundle"] == str((out / slug("2:4+w8a8")).absolute())
    rows = {r["compression"]: r for r in data["compare"]["bundles"]}
    assert set(rows) == {"w8a8", "2:4 + w8a8"}
    # --tolerate made every build measure the asynchronous latency tolerance it asks about
    assert all(list(r["tolerated"]) == ["sync", "async", "ensemble"] for r in rows.values())
    proven = [r for r in rows.values() if r["within_budgets"] and r["tolerated"]["async"]["tolerated"] is not None
              and r["tolerated"]["async"]["tolerated"] >= 1]
    expected = max(proven, key=lambda r: r["efficiency_E"])["bundle"] if proven else None
    assert data["pick"] == expected
    assert json.loads((out / "search.json").read_text()) == json.loads(json.dumps(data))


def test_the_command_exits_3_when_nothing_qualifies(capsys, tmp_path, fast):
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {**fast, "prune.recovery.max_steps": 0}.items()]
    code = main(["search", "--target", "jetson-orin", "--try", "unstructured:0.97", "-o", str(tmp_path / "s"),
                 *sets])
    captured = capsys.readouterr()
    assert code == 3 and "no candidate is within every budget" in captured.err
    assert "candidate unstructured:0.97: not built" in captured.out.replace("\n", " ")
    saved = json.loads((tmp_path / "s" / "search.json").read_text())
    assert saved["pick"] is None and saved["compare"] is None
