"""Results to tables and figures.

``load``      every run under a local path or ``s3://`` prefix as one checked DataFrame
``tables``    mean/std over seeds, paper-style tables, queries/pseudo-label/timing tables
``figures``   accuracy vs round / vs oracle queries, queries saved (PNG, matplotlib Agg)
``clusters``  t-SNE and K-means ARI of image vs class-guided features
``gradfam``   GradFAM heatmaps of convolutional image encoders
``report``    ``build_report(source, out_dir)``: report.md + CSVs + figures; the CLI entry
``sections``  the papers' analysis figures by name (``kd_figures``: ActiveKD, ``cb_figures``: CB)
``runs``      ``runs_table(source)``: one line per stored run (``python -m analysis.runs SOURCE``)

Submodules import lazily so ``import analysis`` stays cheap (no torch, no matplotlib).
"""

from __future__ import annotations

from analysis.load import load_runs

__all__ = ["load_runs"]
