"""Study files, gridspec's case axes, sizes and data_root, the paper layout and the paper numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis.studies import STUDIES, STUDY_DIR, Axis, Study, paper_numbers, study_files, study_table
from raysvc.errors import ConfigError
from raysvc.service.gridspec import apply_size, expand_cells, load_grid


def test_every_study_file_loads_at_its_smoke_size_and_every_study_names_a_file(tmp_path):
    for file in study_files():
        grid = load_grid(STUDY_DIR / f"{file}.yaml", size="smoke", out=str(tmp_path))
        assert {p.spec.dataset for p in grid.plans} == {"animal-mnist", "mnist-5k"}, file
        assert {p.spec.seed for p in grid.plans} == {0, 1}, file
        assert all(p.spec.rounds <= 3 for p in grid.plans), file
    assert {s.file for s in STUDIES.values()} == set(study_files())


def test_full_size_expands_with_the_data_root_and_pairs_each_folder_with_its_split_file():
    from raysvc.service.gridspec import _with_data_root, read_grid_file

    raw = read_grid_file(STUDY_DIR / "cb-fig3.yaml")
    cells = expand_cells(_with_data_root(raw["fixed"], "/d"), _with_data_root(raw["grid"], "/d"))
    assert len(cells) == 7 * 7 * 3  # datasets x strategies x seeds
    dtd = {c.split_file for c in cells if c.dataset == "/d/dtd/images"}
    assert dtd == {"/d/dtd/split_zhou_DescribableTextures.json"}


def test_case_axis_sets_several_options_together():
    cells = expand_cells({"rounds": 1, "learner_params": {"epochs": 2}}, {
        "method": [{"strategy": "cb", "learner_params.prompt": "classwise"},
                   {"strategy": "coreset", "strategy_params": {"features": "guided"}}],
        "seed": [0, 1]})
    assert [(c.strategy, c.seed) for c in cells] == [("cb", 0), ("cb", 1), ("coreset", 0), ("coreset", 1)]
    assert cells[0].learner_params == {"epochs": 2, "prompt": "classwise"}
    assert cells[2].strategy_params == {"features": "guided"} and cells[2].learner_params == {"epochs": 2}


def test_sizes_and_data_root_errors_are_one_line():
    raw = {"fixed": {"rounds": 8}, "grid": {"data": [{"dataset": "{data_root}/x"}], "seed": [0, 1, 2]},
           "sizes": {"smoke": {"fixed": {"rounds": 2}, "grid": {"data": None, "dataset": ["emoji"], "seed": [0]}}}}
    small = apply_size(raw, "smoke")
    assert small["fixed"] == {"rounds": 2} and small["grid"] == {"seed": [0], "dataset": ["emoji"]}
    assert "sizes" not in small and raw["fixed"] == {"rounds": 8}  # the file as written is unchanged
    with pytest.raises(ConfigError, match="no size 'huge'; its sizes: smoke"):
        load_grid(raw, size="huge")
    with pytest.raises(ConfigError, match="names {data_root}: set data_root"):
        load_grid(raw)
    with pytest.raises(ConfigError, match="a case sets run options, not 'nested'"):
        expand_cells({}, {"method": [{"nested": {"strategy": "cb"}}]})


def _frame(rows):
    """A results frame as study_frame makes it: run options, dataset label, seed, round, metric."""
    return pd.DataFrame([{"run_id": f"{o['strategy']}-{d}-{s}-{r}", "options": o, "dataset_label": d, "seed": s,
                          "round": r, "test_acc": a} for o, d, s, r, a in rows])


def test_layout_by_hand_datasets_average_and_paper_column():
    cb = {"strategy": "cb", "strategy.features": "guided"}
    rand = {"strategy": "random"}
    df = _frame([(cb, "DTD", 0, 1, 0.50), (cb, "DTD", 1, 1, 0.60), (cb, "EuroSAT", 0, 1, 0.70),
                 (cb, "EuroSAT", 1, 1, 0.90), (rand, "DTD", 0, 1, 0.10)])
    study = Study("t", "cb-fig3", "t", (Axis("CB", {"strategy": "cb", "strategy.features": "guided"}),
                                        Axis("Random", {"strategy": "random"})), "datasets", round=1)
    paper = pd.DataFrame({"row": ["CB", "Paper only"], "column": ["DTD", "DTD"], "value": ["55.00", "1.00"],
                          "spread": ["0.10", ""]})
    table, missing = study_table(study, df, paper)
    lines = table.splitlines()
    assert lines[0] == "|  | DTD | DTD (paper) | EuroSAT | Average |"
    # CB: DTD seeds 0.50, 0.60 -> 55.00 ± 7.07; EuroSAT 0.70, 0.90 -> 80.00 ± 14.14;
    # Average seed by seed: (0.50 + 0.70) / 2 = 0.60, (0.60 + 0.90) / 2 = 0.75 -> 67.50 ± 10.61
    assert lines[2] == "| CB | 55.00 ± 7.07 | 55.00 ± 0.10 | 80.00 ± 14.14 | 67.50 ± 10.61 |"
    # Random: one seed, one dataset: no ±, no average (a seed lacks EuroSAT)
    assert lines[3] == "| Random | 10.00 |  | not run | not run |"
    assert lines[4] == "| Paper only | not run | 1.00 | not run | not run |"
    assert "Random / EuroSAT" in missing and "Paper only / DTD" in missing and "CB / DTD" not in missing


def test_paper_numbers_as_printed():
    t1 = paper_numbers("akd-table1").set_index(["row", "column"])
    assert t1.loc[("PCoreSet", "Few-Shot"), "value"] == "78.81" and t1.loc[("Random", "No Distill"), "spread"] == "4.33"
    assert len(t1) == 18 and len(paper_numbers("akd-imagenet")) == 15
    cb1 = paper_numbers("cb-table1").set_index(["row", "column"])
    assert cb1.loc[("ProMetaR + CB*", "Average"), "value"] == "68.69"
    assert cb1.loc[("MaPLe + CB", "EuroSAT"), "value"] == "73.50" and len(cb1) == 72
    assert paper_numbers("cb-table2").set_index("row").loc["Image + Text (soft)", "value"] == "55.92"
    t6 = paper_numbers("cb-table6").set_index(["row", "column"])
    assert t6.loc[("K = 8 x B", "Round 1"), "value"] == "59.77" and len(t6) == 24
    t11 = paper_numbers("cb-table11").set_index(["row", "column"])
    assert t11.loc[("Class-guided: ProbCover*", "OxfordPets"), "value"] == "68.61" and len(t11) == 63
    every_value = pd.concat([paper_numbers(t) for t in ("cb-table1", "cb-table2", "cb-table6", "cb-table11")])
    assert not every_value["value"].map(lambda v: math.isnan(float(v))).any()


def test_paper_rows_and_columns_are_the_layouts():
    for study in STUDIES.values():
        paper = paper_numbers(study.paper_table)
        if not len(paper):
            continue
        rows = {r.label for r in study.rows}
        assert set(paper["row"]) <= rows or study.name == "cb-table1", study.name  # Table 1: learners raysvc lacks
        if not isinstance(study.columns, str):
            assert set(paper["column"]) <= {c.label for c in study.columns}, study.name


def test_every_studys_analysis_is_one_of_the_analyses():
    """A study's report section runs its analysis by name (analysis.sections.ANALYSES)."""
    from analysis.sections import ANALYSES

    named = {s.analysis for s in STUDIES.values() if s.analysis}
    assert named and named <= set(ANALYSES), named - set(ANALYSES)
