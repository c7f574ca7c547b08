"""Studies: one grid file per table or figure of the two papers, and the report section that
lays its results out as the paper does.

A study file (``jobs/configs/studies/<file>.yaml``) is a grid file (:mod:`raysvc.service.gridspec`)
as written for a GPU cluster, with a ``smoke`` size that runs on one small machine. One file
can serve several tables and figures (the same runs, read differently): :data:`STUDIES` names
each table and figure, the file whose runs it reads, and its layout.

    python -m analysis.studies run cb-fig3 --size smoke --out results/studies     # one after another, no Ray
    raysvc report results/studies --study cb-fig3 --out reports/cb-fig3

:func:`study_section` lays out the runs of the study's file (found by run id, so one
destination can hold every study) in the paper's rows and columns, with the paper's value
in a second column where it prints one (:mod:`analysis.paper_numbers`), and names the cells
raysvc did not run. A study whose figure is drawn by an analysis of :mod:`analysis.sections`
names it; that analysis is looked up when the report is made.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from analysis.tables import AVERAGE
from raysvc.entry import Parser, entry_point
from raysvc.errors import AnalysisError, ConfigError, RaysvcError

STUDY_DIR = Path(__file__).resolve().parent.parent / "jobs" / "configs" / "studies"
NOT_RUN = "not run"


def study_files() -> list[str]:
    """The study files' names (``cb-fig3``, ...), sorted."""
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


def load_study_grid(file: str, size: str | None = None, out: str | None = None):
    """The :class:`~raysvc.service.gridspec.Grid` of a study file at ``size`` (None: as written)."""
    from raysvc.service.gridspec import load_grid

    path = STUDY_DIR / f"{file}.yaml"
    if not path.is_file():
        raise ConfigError(f"no study file {file!r}; study files: {', '.join(study_files())}")
    return load_grid(path, size=size, out=out)


def run_study(file: str, size: str, out: str, print_fn: Callable[[str], None] = print) -> list[str]:
    """Run a study file's cells at ``size`` one after another in this process (no Ray), leaving
    out runs already stored at ``out``; the run ids of the study."""
    from raysvc import storage
    from raysvc.featurecache import FeatureCache
    from raysvc.run import execute

    grid = load_study_grid(file, size, out)
    grid.check_writable()
    stored = storage.stored_runs(out).complete
    cache = FeatureCache(grid.settings.features)
    todo = [plan for plan in grid.plans if plan.run_id not in stored]
    print_fn(f"{file} ({size}): {len(grid.plans)} runs, {len(grid.plans) - len(todo)} already stored")
    for plan in todo:
        result = execute(plan, encode=cache.encode)
        print_fn(f"{plan.run_id}: " + " ".join(f"{r['test_acc']:.3f}" for r in result.rows))
    return grid.run_ids



@dataclasses.dataclass(frozen=True)
class Axis:
    """A row or column of a study's table: which runs it holds (``match``: run options, top-level
    like ``strategy`` or a part's resolved option like ``strategy.features``), and where set, the
    round and the metric its cells read."""

    label: str
    match: dict = dataclasses.field(default_factory=dict)
    round: int | None = None
    metric: str | None = None


@dataclasses.dataclass(frozen=True)
class Study:
    """A table or figure of a paper: the study file whose runs it reads, and its layout.

    ``columns`` is a list of :class:`Axis`, or ``"datasets"`` (one column per dataset, the
    paper's and the runs', then ``Average``) or ``"rounds"`` (Round 1 ... the last). Cells
    not split by dataset average over datasets seed by seed, then over seeds.
    ``round`` is the default round (None: each run's last)."""

    name: str
    file: str
    title: str
    rows: tuple[Axis, ...] = ()
    columns: tuple[Axis, ...] | str = "rounds"
    metric: str = "test_acc"
    round: int | None = None
    match: dict = dataclasses.field(default_factory=dict)  # every cell's runs
    paper_table: str | None = None
    analysis: str | None = None
    note: str = ""


def _a(label, round=None, metric=None, **match):  # noqa: A002
    return Axis(label, {k.replace("__", "."): v for k, v in match.items()}, round, metric)


CB_STRATEGIES = (_a("Random", strategy="random"), _a("Entropy", strategy="entropy"), _a("CoreSet", strategy="coreset"),
                 _a("BADGE", strategy="badge"), _a("PCB", strategy="pcb"), _a("CB", strategy="cb"),
                 _a("CB+SQ", strategy="cbsq"))
AKD_STRATEGIES = (_a("Random", strategy="random"), _a("Coreset", strategy="coreset"),
                  _a("Entropy", strategy="entropy"), _a("BADGE", strategy="badge"),
                  _a("ClassBalanced", strategy="classbalanced"),
                  _a("PCoreSet", strategy="pcoreset", strategy__reverse=False))
AKD_LEARNERS = (_a("No Distill", learner="no-distill"), _a("Zero-Shot", learner="kd-zeroshot"),
                _a("Few-Shot", learner="kd-fewshot"))
PROMPTS = (("U", "unified"), ("C", "classwise"), ("B", "both"))
FIG5 = (("CB", "cb"), ("CB+SQ", "cbsq"), ("CoreSet", "coreset"), ("CoreSet+SQ", "sq:coreset"),
        ("Entropy", "entropy"), ("Entropy+SQ", "sq:entropy"), ("PCB", "pcb"), ("PCB+SQ", "sq:pcb"))
ONE_SHOT = dict(strategy="random", initial_per_class=1)
CB_STAR = dict(strategy="cb", strategy__features="label")
BUDGET = tuple(_a(f"{pct}%", round=pct * 8 // 100) for pct in (25, 50, 75, 100))
CB_TABLE11 = (_a("Random", strategy="random"),
              *(_a(f"{kind}: {label}", strategy=name, strategy__features=feat, **extra)
                for kind, feat in (("Image", "image"), ("Class-guided", "guided"))
                for label, name, extra in (("TypiClust", "typiclust", {}),
                                           ("ProbCover", "probcover", {"strategy__centres": "greedy"}),
                                           ("ProbCover*", "probcover", {"strategy__centres": "kmeans"}),
                                           ("DropQuery", "dropquery", {}))))
RAYSVC_COOP = "raysvc learns CoOp prompts, not MaPLe, PromptSRC or ProMetaR (image-side prompts through the " \
              "image encoder every step; docs/studies.md): its rows are CoOp on the same kinds of sets."

STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("cb-fig3", "cb-fig3", "CB paper, Fig. 3: test accuracy (%) by round, average over datasets",
          CB_STRATEGIES),
    Study("cb-fig7", "cb-fig3", "CB paper, Fig. 7: (a) oracle queries spent by round; (b) the constructed "
          "set's pseudo-label accuracy", CB_STRATEGIES, metric="n_queried", analysis="cb-fig7b"),
    Study("cb-fig8", "cb-fig8", "CB paper, Fig. 8: ImageNet, test accuracy (%) by round",
          tuple(a for a in CB_STRATEGIES if a.label in ("Random", "Entropy", "CB", "CB+SQ"))),
    Study("cb-fig11", "cb-fig3", "CB paper, Fig. 11: accuracy against the oracle queries spent (queries by "
          "round; accuracy by round in cb-fig3)", CB_STRATEGIES, metric="n_queried"),
    Study("cb-fig5", "cb-fig5", "CB paper, Fig. 5: selective querying (SQ) by acquisition and prompt type "
          "(U unified, C class-wise, B both); test accuracy (%) by round",
          tuple(_a(f"{label} ({p})", strategy=name, learner__prompt=prompt)
                for label, name in FIG5 for p, prompt in PROMPTS)),
    Study("cb-fig6", "cb-fig6", "CB paper, Fig. 6: confidence distributions, class-wise against unified prompts",
          analysis="cb-fig6"),
    Study("cb-fig9", "cb-fig9", "CB paper, Fig. 9: ablations, test accuracy (%) by round",
          (*(_a(f"{label} ({p})", strategy=name, learner__prompt=prompt)
             for label, name in (("CB", "cb"), ("PCB", "pcb")) for p, prompt in PROMPTS),
           _a("CB+SQ (B)", strategy="cbsq", learner__prompt="both"),
           _a("CB+SQ (C)", strategy="cbsq", learner__prompt="classwise"),
           _a("CoreSet (image)", strategy="coreset", strategy__features="image"),
           _a("CoreSet (class-guided)", strategy="coreset", strategy__features="guided"))),
    Study("cb-fig13", "cb-fig13", "CB paper, Fig. 13: harmonic mean (%) of base and novel accuracy by round",
          CB_STRATEGIES, metric="test_acc_hm"),
    Study("cb-fig15", "cb-fig15", "CB paper, Fig. 15: class-guided clustering across rounds (ARI)",
          analysis="cb-fig15"),
    Study("cb-table1", "cb-table1", "CB paper, Table 1: the initial round's sets as training sets, test accuracy (%)",
          (_a("CoOp 1-shot", round=0, **ONE_SHOT), _a("CoOp + CB", strategy="cb",
           strategy__features="guided"), _a("CoOp + CB*", **CB_STAR)), "datasets", round=1,
          paper_table="cb-table1", note=RAYSVC_COOP),
    Study("cb-table2", "cb-table2", "CB paper, Table 2: CB's feature space in the initial round, test accuracy (%)",
          (_a("Image", strategy="cb", strategy__features="image"),
           _a("Text (soft)", strategy="cb", strategy__features="text"),
           _a("Image + Text (soft)", strategy="cb", strategy__features="guided"),
           _a("Ground truth", round=0, **ONE_SHOT),
           _a("Image + Text (label) + Ground truth", **CB_STAR)), "datasets", round=1, paper_table="cb-table2"),
    Study("cb-table3", "cb-table3", "CB paper, Table 3: base-to-novel generalisation in the initial round (%)",
          (_a("Random", strategy="random"), _a("CB", strategy="cb")),
          (_a("Base", metric="test_acc_base"), _a("Novel", metric="test_acc_novel"), _a("HM", metric="test_acc_hm")),
          round=1, paper_table="cb-table3"),
    Study("cb-table6", "cb-table6", "CB paper, Table 6: K of K-means, test accuracy (%) by round",
          (_a("K = B", strategy__clusters_per_budget=1), _a("K = 8 x B", strategy__clusters_per_budget=8),
           _a("K = r x B", strategy__clusters_per_budget=None)), match={"strategy": "cb"}, paper_table="cb-table6"),
    *(Study(f"cb-table{t}", f"cb-table{t}", f"CB paper, Table {t}: {what}, test accuracy (%) at a share of the "
            "8-round budget", BUDGET,
            tuple(_a(label, strategy=name) for label, name in (("Entropy", "entropy"), ("CoreSet", "coreset"),
                                                               ("BADGE", "badge"), ("PCB", "pcb"), ("CB", "cb"))),
            paper_table=f"cb-table{t}")
      for t, what in ((7, "ISIC"), (8, "KaoKore"), (9, "DTD with CLIP ViT-L/14-336"),
                      (10, "DTD with EVA01-CLIP-g-14-plus"))),
    Study("cb-table11", "cb-table11", "CB paper, Table 11: initial-round acquisitions on image against "
          "class-guided features, test accuracy (%)", CB_TABLE11, "datasets", round=1, paper_table="cb-table11"),
    Study("akd-table1", "akd-table1", "ActiveKD paper, Table 1 (average over the ten datasets): final-round test "
          "accuracy (%)", AKD_STRATEGIES, AKD_LEARNERS, paper_table="akd-table1"),
    Study("akd-imagenet", "akd-imagenet", "ActiveKD paper, Table 1 (ImageNet): final-round test accuracy (%)",
          tuple(a for a in AKD_STRATEGIES if a.label != "BADGE"), AKD_LEARNERS, paper_table="akd-imagenet"),
    Study("akd-fig1", "akd-table1", "ActiveKD paper, Fig. 1: final-round test accuracy (%) per dataset by framework "
          "(the figure does not name its strategy: PCoreSet here)", AKD_LEARNERS, "datasets",
          match={"strategy": "pcoreset", "strategy.reverse": False}),
    Study("akd-fig5", "akd-table1", "ActiveKD paper, Fig. 5: test accuracy (%) by round, average over datasets",
          tuple(Axis(f"{s.label} / {lrn.label}", {**s.match, **lrn.match})
                for lrn in AKD_LEARNERS for s in AKD_STRATEGIES)),
    Study("akd-fig6", "akd-table1", "ActiveKD paper, Fig. 6 (and Fig. 16 per dataset): the few-shot teacher's test "
          "accuracy (%) by round", AKD_STRATEGIES, metric="teacher_acc", match={"learner": "kd-fewshot"}),
    Study("akd-fig7", "akd-table1", "ActiveKD paper, Fig. 7: zero-shot distillation, final-round test accuracy (%) "
          "per dataset", AKD_STRATEGIES, "datasets", match={"learner": "kd-zeroshot"}),
    Study("akd-fig14", "akd-table1", "ActiveKD paper, Fig. 14: no distillation, final-round test accuracy (%) per "
          "dataset", AKD_STRATEGIES, "datasets", match={"learner": "no-distill"}),
    Study("akd-fig15", "akd-table1", "ActiveKD paper, Fig. 15: few-shot teacher distillation, final-round test "
          "accuracy (%) per dataset", AKD_STRATEGIES, "datasets", match={"learner": "kd-fewshot"}),
    Study("akd-fig16", "akd-table1", "ActiveKD paper, Fig. 16: the few-shot teacher's final-round test accuracy "
          "(%) per dataset", AKD_STRATEGIES, "datasets", metric="teacher_acc", match={"learner": "kd-fewshot"}),
    Study("akd-fig8", "akd-fig8", "ActiveKD paper, Fig. 8: TinyViT students, test accuracy (%) by round",
          AKD_STRATEGIES),
    Study("akd-fig13", "akd-fig13", "ActiveKD paper, Fig. 13: MobileNetV2 students, test accuracy (%) by round",
          AKD_STRATEGIES),
    Study("akd-fig4", "akd-fig4", "ActiveKD paper, Fig. 4: the teacher's structured bias and its propagation",
          analysis="akd-fig4"),
    Study("akd-fig9", "akd-fig9", "ActiveKD paper, Fig. 9: bias propagation by strategy, PCoreSet+R included "
          "(test accuracy (%) by round here; KNN loss and purity from the analysis)",
          (*AKD_STRATEGIES, _a("PCoreSet+R", strategy="pcoreset", strategy__reverse=True)), analysis="akd-fig9"),
    Study("akd-fig10", "akd-fig9", "ActiveKD paper, Fig. 10: the selection criteria by strategy", analysis="akd-fig10"),
    Study("akd-fig11", "akd-fig9", "ActiveKD paper, Figs. 11 and 17: probability heatmaps of the selected images",
          analysis="akd-fig11"),
    Study("akd-fig12", "akd-fig9", "ActiveKD paper, Figs. 12 and 18-24: the images PCoreSet selects",
          analysis="akd-fig12"),
)}

# a dataset folder's paper name, by a part of its path (CoOp's folder names)
PAPER_DATASETS = {
    "caltech-101": "Caltech101", "oxford_pets": "OxfordPets", "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102", "fgvc_aircraft": "FGVCAircraft", "dtd": "DTD", "eurosat": "EuroSAT",
    "food-101": "Food101", "sun397": "SUN397", "ucf101": "UCF101", "imagenet": "ImageNet", "isic": "ISIC",
    "kaokore": "KaoKore",
}


def dataset_label(dataset: str) -> str:
    """The paper's name of a dataset folder (``/data/coop/dtd/images`` -> ``DTD``), else the name as given."""
    lowered = dataset.lower()
    return next((name for part, name in PAPER_DATASETS.items() if f"/{part}" in f"/{lowered}"), dataset)


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ConfigError(f"no study {name!r}; studies: {', '.join(sorted(STUDIES))}")
    return STUDIES[name]


def run_options(manifest: dict) -> dict:
    """A run's options as study axes match them: the spec's fields, and each part's resolved
    options as ``strategy.features`` ... (``sq:`` strategies: their own options)."""
    out = dict(manifest["config"])
    for part, options in (manifest.get("options") or {}).items():
        for key, value in (options or {}).items():
            out[f"{part}.{key}"] = value
    return out


def _matches(options: dict, match: dict) -> bool:
    return all(options.get(k, None) == v for k, v in match.items())


def study_frame(records: pd.DataFrame, manifests: dict[str, dict]) -> pd.DataFrame:
    """``records`` with each run's options (:func:`run_options`) and its dataset's paper name."""
    options = {run_id: run_options(m) for run_id, m in manifests.items()}
    df = records[records["run_id"].isin(list(options))].copy()
    df["options"] = df["run_id"].map(options)
    df["dataset_label"] = df["dataset"].map(dataset_label)
    return df


def _cell(df: pd.DataFrame, study: Study, row: Axis, col: Axis, dataset: str | None) -> tuple[float, float, int]:
    """Mean and std over seeds (ddof=1) of a cell, and its seeds: NaN, NaN, 0 when no run is in it."""
    match = {**study.match, **row.match, **col.match}
    metric = col.metric or row.metric or study.metric
    keep = df["options"].map(lambda o: _matches(o, match))
    part = df[keep]
    if dataset is not None:
        part = part[part["dataset_label"] == dataset]
    if part.empty or metric not in part:
        return math.nan, math.nan, 0
    round_ = col.round if col.round is not None else row.round if row.round is not None else study.round
    if round_ is None:
        part = part[part["round"] == part.groupby("run_id")["round"].transform("max")]
    else:
        part = part[part["round"] == round_]
    if part.empty:
        return math.nan, math.nan, 0
    if part.duplicated(["dataset_label", "seed"]).any():
        raise AnalysisError(f"study {study.name}: cell ({row.label}, {col.label}) holds two runs of one dataset and "
                            "seed; its axes do not tell them apart")
    # the average over every dataset of the study's runs, seed by seed: a seed lacking one has none
    # (an average over fewer datasets is not comparable)
    datasets = [dataset] if dataset is not None else sorted(df["dataset_label"].unique())
    per_seed = part.pivot(index="seed", columns="dataset_label", values=metric).reindex(columns=datasets).dropna()
    values = per_seed.mean(axis=1).to_numpy(dtype=float)
    if len(values) == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def _percent_metric(metric: str) -> bool:
    return metric.startswith(("test_acc", "teacher_acc", "pseudo_acc", "zeroshot_acc"))


def _fmt(mean: float, std: float, percent: bool) -> str:
    scale, digits = (100.0, 2) if percent else (1.0, 1)
    if math.isnan(mean):
        return NOT_RUN
    text = f"{mean * scale:.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def _columns(study: Study, df: pd.DataFrame, paper: pd.DataFrame) -> list[tuple[Axis, str | None]]:
    """(column, dataset) pairs: dataset None where a cell averages over the datasets."""
    if study.columns == "datasets":
        names = list(dict.fromkeys([*paper["column"], *sorted(df["dataset_label"].unique())]))
        names = [n for n in names if n != AVERAGE]
        return [(Axis(n), n) for n in names] + [(Axis(AVERAGE), None)]
    if study.columns == "rounds":
        last = max([int(df["round"].max()) if len(df) else 0,
                    *(int(c.split()[-1]) for c in paper["column"] if c.startswith("Round "))])
        return [(Axis(f"Round {r}", round=r), None) for r in range(1, last + 1)]
    return [(c, None) for c in study.columns]


def study_table(study: Study, df: pd.DataFrame, paper: pd.DataFrame | None = None) -> tuple[str, list[str]]:
    """The study's table as markdown (each column beside the paper's where the paper prints one)
    and the cells raysvc did not run (``row / column``)."""
    paper = paper if paper is not None else pd.DataFrame(columns=["row", "column", "value", "spread"])
    printed = {(r.row, r.column): f"{r.value} ± {r.spread}" if str(r.spread) not in ("", "nan") else str(r.value)
               for r in paper.itertuples()}
    columns = _columns(study, df, paper)
    with_paper = {col.label for col, _ in columns if any(c == col.label for _, c in printed)}
    ran = {r.label for r in study.rows}
    # rows only the paper has (Table 1's MaPLe, PromptSRC, ProMetaR) come after raysvc's, never matched to runs
    rows = [(r, True) for r in study.rows] + [(Axis(label), False) for label in dict.fromkeys(paper["row"])
                                              if label not in ran]
    header = ["", *(h for col, _ in columns for h in ([col.label, f"{col.label} (paper)"] if col.label in with_paper
                                                      else [col.label]))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    missing = []
    for row, runs in rows:
        cells = [row.label]
        for col, dataset in columns:
            mean, std, _ = _cell(df, study, row, col, dataset) if runs else (math.nan, math.nan, 0)
            metric = col.metric or row.metric or study.metric
            cells.append(_fmt(mean, std, _percent_metric(metric)))
            if math.isnan(mean):
                missing.append(f"{row.label} / {col.label}")
            if col.label in with_paper:
                cells.append(printed.get((row.label, col.label), ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), missing


def paper_numbers(table: str | None) -> pd.DataFrame:
    """The paper's printed numbers of ``table`` (analysis/paper_numbers.csv), as strings."""
    frame = pd.read_csv(Path(__file__).with_name("paper_numbers.csv"), dtype=str, keep_default_na=False)
    return frame[frame["table"] == table].reset_index(drop=True)


def _analysis_section(name: str, source, out: Path, run_ids: Sequence[str]) -> str:
    """The section the analysis ``name`` of :mod:`analysis.sections` writes."""
    from analysis.sections import ANALYSES

    section = ANALYSES[name](source, out, run_ids=list(run_ids))
    return f"### {section.title}\n\n{section.markdown}"


def study_section(name: str, source, out, *, size: str | None = None, records=None) -> str:
    """Markdown: the study's table laid out as the paper's, its paper values beside, the cells
    not run, and its analysis section. The runs are the study file's at ``size`` (None: the
    full size; every size when the source holds runs of several) found under ``source``."""
    from analysis.load import load_results

    study = get_study(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_ids = _study_run_ids(study.file, size)
    loaded = load_results(source) if records is None else records
    manifests = {k: v for k, v in loaded.manifests.items() if k in run_ids}
    if not manifests:
        raise AnalysisError(f"no run of study {name} (file {study.file}) in {source}: run it first, e.g. "
                            f"python -m analysis.studies run {study.file} --size smoke --out {source}")
    parts = [f"## {study.title}", f"Study file: `jobs/configs/studies/{study.file}.yaml`; "
             f"{len(manifests)} of its {len(run_ids)} runs found in {source}."]
    if study.rows:
        paper = paper_numbers(study.paper_table)
        table, missing = study_table(study, study_frame(loaded.records, manifests), paper)
        parts.append(table)
        if len(paper):
            parts.append(f"The (paper) columns are {paper['source'].iloc[0]}, as printed (mean ± std over the "
                         "paper's seeds where it gives one); the others are raysvc's runs, mean ± std over seeds.")
        if missing:
            parts.append(f"Not run by raysvc here: {'; '.join(missing)}.")
    if study.note:
        parts.append(study.note)
    if study.analysis:
        parts.append(_analysis_section(study.analysis, source, out, sorted(manifests)))
    text = "\n\n".join(parts) + "\n"
    (out / f"study-{name}.md").write_text(text)
    return text


def _study_run_ids(file: str, size: str | None) -> set[str]:
    """The run ids of a study file at ``size``; None: at every size and as written (the full size
    cannot resolve where its data folders are absent)."""
    from raysvc.service.gridspec import read_grid_file

    if size is not None:
        return set(load_study_grid(file, size).run_ids)
    ids: set[str] = set()
    raw = read_grid_file(STUDY_DIR / f"{file}.yaml")
    for each in [None, *(raw.get("sizes") or {})]:
        try:
            ids.update(load_study_grid(file, each).run_ids)
        except RaysvcError:
            continue  # the full size, where its datasets are not on this machine
    return ids


@entry_point("analysis.studies")
def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m analysis.studies", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run study files' cells one after another in this process")
    run.add_argument("files", nargs="+", help="study files (cb-fig3, ...) or 'all'")
    run.add_argument("--size", default="smoke", help="the files' size (default smoke)")
    run.add_argument("--out", required=True, help="results destination")
    report = sub.add_parser("report", help="every study's section (raysvc report SOURCE --study NAME for each)")
    report.add_argument("source", help="results destination holding the studies' runs")
    report.add_argument("--size", default=None, help="the size whose runs to read (default: every size)")
    report.add_argument("--out", required=True, help="folder for study-NAME.md and studies.md")
    args = parser.parse_args(argv)
    if args.command == "run":
        files = study_files() if args.files == ["all"] else args.files
        for file in files:
            run_study(file, args.size, args.out, print_fn=lambda line: print(line, flush=True))
        return 0
    return write_all_sections(args.source, args.out, args.size)


def write_all_sections(source, out, size: str | None) -> int:
    """``OUT/studies.md``: every study's section, or one line naming a study without runs; 0
    when every study has a section."""
    from analysis.load import load_results

    loaded = load_results(source)
    parts, missing = [], []
    for name in STUDIES:
        try:
            parts.append(study_section(name, source, out, size=size, records=loaded))
        except AnalysisError as exc:
            missing.append(name)
            parts.append(f"## {name}\n\n{exc}\n")
    Path(out, "studies.md").write_text("\n".join(parts))
    print(f"wrote {Path(out, 'studies.md')}: {len(STUDIES) - len(missing)} of {len(STUDIES)} study sections"
          + (f"; no runs for {', '.join(missing)}" if missing else ""))
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
