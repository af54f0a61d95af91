"""The leaderboard: reference rows, ranking, the three renderers and bad folders."""

from __future__ import annotations

import dataclasses

import pytest

from robustbench_local.card import REPORTED_BY_PAPER, ModelCard, percent_interval
from robustbench_local.leaderboard import Leaderboard, reference_cards, summary
from robustbench_local.reference import SUITE_VERSION

MINE = ModelCard(
    name="tiny mlp on mnist",
    architecture="digits_mlp",
    dataset="mnist",
    threat_model="linf",
    eps=0.3,
    clean_acc=97.5,
    robust_acc=90.0,
    n_examples=80,
    ci_low=81.1,
    ci_high=92.0,
    seed=0,
    weights_digest="cd" * 32,
    suite_version=SUITE_VERSION,
)


def test_reference_rows_match_the_autoattack_table():
    rows = {c.name: c for c in reference_cards("mnist", "linf")}
    madry = rows["PGD-AT (Madry et al. 2018)"]
    assert (madry.clean_acc, madry.robust_acc, madry.reported) == (98.53, 88.50, 89.62)
    wong = rows["FGSM-RS fast AT (Wong et al. 2020)"]
    assert (wong.clean_acc, wong.robust_acc, wong.reported) == (98.50, 82.93, 88.77)
    trades = rows["TRADES (Zhang et al. 2019)"]
    assert (trades.clean_acc, trades.robust_acc, trades.reported) == (99.48, 92.81, 95.60)
    assert all(c.source == REPORTED_BY_PAPER and c.eps == 0.3 for c in rows.values())
    assert all(c.link and c.reference and "auto-attack" in c.reference for c in rows.values())
    n = madry.n_examples
    assert (madry.ci_low, madry.ci_high) == percent_interval(round(88.50 * n / 100), n)
    assert reference_cards("cifar10", "linf") == []


def test_leaderboard_ranks_cards_among_reference_rows(tmp_path):
    MINE.save(tmp_path)
    digits = dataclasses.replace(MINE, name="tiny mlp", dataset="digits", eps=0.05)
    digits.save(tmp_path)  # another track, left out
    board = Leaderboard.load(tmp_path, "mnist", "linf")
    names = [c.name for c in board.cards]
    assert names.index("tiny mlp on mnist") == names.index("Atzmon et al. 2019") + 1
    assert len(board) == len(reference_cards("mnist", "linf")) + 1
    robust = [c.robust_acc for c in board.cards]
    assert robust == sorted(robust, reverse=True)
    assert [r[0] for r in board.rows()] == [str(i) for i in range(1, len(board) + 1)]
    text = board.to_text()
    assert text.splitlines()[0] == "Leaderboard: mnist, linf, eps=0.3"
    assert "reported by paper" in text and "tiny mlp on mnist" in text and "88.50" in text
    md = board.to_markdown()
    assert md.count("\n| ") == len(board) + 1  # header + rows
    page = board.to_html(tmp_path / "board.html")
    assert page.count("<tr") == len(board) + 1 and page.count('class="reference"') == len(board) - 1
    assert (tmp_path / "board.html").read_text() == page
    only = Leaderboard.load(tmp_path, "digits", "linf", references=False)
    assert [c.name for c in only.cards] == ["tiny mlp"]
    assert [c.name for c in Leaderboard.load(tmp_path, "mnist", references=False).cards] == [
        "tiny mlp on mnist"
    ]


def test_leaderboard_rejects_bad_files_and_missing_dirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Leaderboard.load(tmp_path / "nope")
    (tmp_path / "broken.json").write_text('{"name": "x"}')
    with pytest.raises(ValueError, match=r"broken\.json"):
        Leaderboard.load(tmp_path)
    with pytest.raises(ValueError, match="threat_model"):
        Leaderboard([], threat_model="l3")


def test_summary_names_the_numbers():
    lines = summary(dataclasses.replace(MINE, health=[{"name": "monotone", "ok": False}]))
    assert lines.splitlines() == [
        "tiny mlp on mnist (digits_mlp) on mnist linf eps=0.3",
        "  clean 97.50%  robust 90.00% (95% CI 81.1-92.0) on 80 samples",
        f"  suite v{SUITE_VERSION}, seed 0, digest cdcdcdcdcdcdcdcd",
        "  health warnings: monotone",
    ]


def test_cards_of_another_suite_version_are_marked_and_the_legend_names_the_suite(tmp_path):
    old = dataclasses.replace(MINE, name="old card", suite_version="1", weights_digest="ef" * 32)
    reduced = dataclasses.replace(
        MINE, name="quick card", suite_version=f"{SUITE_VERSION}-reduced", weights_digest="ab" * 32
    )
    for card in (MINE, old, reduced):
        card.save(tmp_path)
    board = Leaderboard.load(tmp_path, "mnist", "linf", references=False)
    source = {row[1]: row[8] for row in board.rows()}
    assert source["tiny mlp on mnist"] == "benchmarked locally"
    assert source["old card"] == "benchmarked locally (suite v1)"
    assert source["quick card"] == f"benchmarked locally (suite v{SUITE_VERSION}-reduced)"
    legend = board.to_text().splitlines()[-1]
    assert f"standard suite v{SUITE_VERSION} (APGD-CE, APGD-T, FAB-T, Square" in legend
    assert "EOT" in legend


def test_one_table_per_track_with_a_header_naming_it(tmp_path):
    low = dataclasses.replace(MINE, name="mine at 0.1", eps=0.1, robust_acc=95.0)
    pngs = dataclasses.replace(
        MINE, name="on my pngs", dataset="pngs", eps=8 / 255, weights_digest="ef" * 32,
        dataset_digest="ab" * 32, dataset_origin="folder /data/pngs",
    )  # fmt: skip
    npz = dataclasses.replace(  # the same images from another file: the same track
        pngs, name="on my npz", dataset="digits", robust_acc=80.0, weights_digest="12" * 32,
        dataset_origin="file /data/digits.npz",
    )  # fmt: skip
    other = dataclasses.replace(pngs, name="other data", dataset_digest="cd" * 32)
    for card in (MINE, low, pngs, npz, other):
        card.save(tmp_path)
    board = Leaderboard.load(tmp_path)
    titles = [track.title() for track, _ in board.groups()]
    assert titles == [
        "mnist, linf, eps=0.1",
        "mnist, linf, eps=0.3",
        f"digits / pngs (file /data/digits.npz; folder /data/pngs, sha256 {'ab' * 6}), linf, "
        "eps=8/255",
        f"pngs (folder /data/pngs, sha256 {'cd' * 6}), linf, eps=8/255",
    ]
    tables = {track.title(): [c.name for c in cards] for track, cards in board.groups()}
    assert tables["mnist, linf, eps=0.1"] == ["mine at 0.1"]  # never ranked with the 0.3 rows
    paper = tables["mnist, linf, eps=0.3"]
    assert "tiny mlp on mnist" in paper and "PGD-AT (Madry et al. 2018)" in paper
    assert tables[titles[2]] == ["on my pngs", "on my npz"]  # ranked together: same digest
    assert tables[titles[3]] == ["other data"]
    assert [r[0] for r in board.rows(board.groups()[2][0])] == ["1", "2"]

    text = board.to_text()
    assert [line for line in text.splitlines() if line.startswith("Leaderboard")] == [
        f"Leaderboard: {t}" for t in titles
    ]
    md = board.to_markdown()
    assert [line[3:] for line in md.splitlines() if line.startswith("## ")] == [
        f"Leaderboard: {t}" for t in titles
    ]
    page = board.to_html()
    assert page.count("<h2>") == page.count("<table>") == 4
    assert "Leaderboard: mnist, linf, eps=0.1</h2>" in page

    mine = Leaderboard.load(tmp_path, dataset="ab" * 4, references=False)  # a digest prefix
    assert [c.name for c in mine.cards] == ["on my pngs", "on my npz"]
    assert Leaderboard.load(tmp_path, eps=0.1).cards == [low]
    assert "no cards match" in Leaderboard.load(tmp_path, "cifar10").to_text()
    assert summary(npz).splitlines()[-1] == f"  data: file /data/digits.npz, sha256 {'ab' * 8}"
