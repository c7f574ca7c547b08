"""Time and peak memory of one selection per registered strategy, next to its reference.

Usage::

    .venv/bin/python -m bench.selection --sizes 10k,100k --dim 512 --classes 1000
    .venv/bin/python -m bench.selection --sizes 1.28M --refs none --dtype float16

The pool is synthetic and seeded: ``classes`` Gaussian blobs on the unit sphere (one
per class, uneven sizes), L2-normalised features, probabilities a softmax of scaled
cosine to perturbed class centres (the class "text" embeddings), ``--labeled-frac`` of
the pool labeled with its blob's class. It is generated once per shape into
``--cache-dir`` and every measurement loads it in a fresh subprocess.

Memory. ``tracemalloc`` only sees Python allocations, not numpy/BLAS/faiss/torch C
buffers, so each measurement runs in its own subprocess that (1) imports numpy, torch,
faiss and scikit-learn and loads the pool, (2) records its RSS (``base``), (3) resets
the kernel's RSS high-water mark by writing ``5`` to ``/proc/self/clear_refs``, (4)
runs one ``select`` and (5) reads the high-water mark back (``VmHWM``, the same value
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` reports). ``peak`` is that high-water
mark and ``extra = peak - base`` is what the selection itself needed on top of the pool.
Where clear_refs is refused the high-water mark includes loading, which is noted.
A watchdog thread in the worker samples RSS and stops the measurement past
``--mem-cap-gb``.

References are the straightforward formulations of the official code, run in the same
invocation on the same pool and seed:

* coreset, pcoreset: ``kcenter_greedy_reference`` (recompute every candidate-to-centre
  distance in float64 at every pick). When the full run would exceed ``--ref-timeout``
  it runs the first ``b`` picks only; the full time is then reported as at least
  ``t_b * budget / b`` (a lower bound: a step costs more as centres accumulate), and the
  ratio is marked ``>=``. Its picks are compared with the fast path's prefix.
* badge, pcb: ``badge_select_reference`` on materialised ``(N, C*D)`` embeddings,
  skipped with the memory it would need when over ``--ref-mem-cap-gb``.
* cb, cbsq, typiclust, dropquery: the strategy with ``kmeans`` replaced by
  ``kmeans_reference`` (scikit-learn KMeans); the inertia of both is compared.
* random, entropy, classbalanced, probcover: no reference formulation ("n/a").

Results are merged into ``bench/results/selection_<host>.csv`` and ``.md`` (rows of the
same shape, dtype, device and strategy are replaced) and the table is printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench import parse_size, status_kb

GB = 1024**3
RESULTS = Path(__file__).resolve().parent / "results"
KCENTER = {"coreset": "features", "pcoreset": "probs"}
BADGE = ("badge", "pcb")
# the module each selector reaches K-means through (replaced there by the reference)
KMEANS = ("cb", "cbsq", "typiclust", "dropquery")  # clustering strategies: their K-means is strategy.kmeans
FIELDS = ["host", "device", "n", "dim", "classes", "dtype", "budget", "n_labeled", "round", "strategy", "status",
          "time_s", "base_gb", "peak_gb", "extra_gb", "reference", "ref_status", "ref_time_s", "ref_extra_gb",
          "speedup", "check"]


# ---------------------------------------------------------------------------------------------
# pool


def fmt_size(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:g}M"
    return f"{n / 1e3:g}k" if n >= 1000 else str(n)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def generate_pool(path: Path, n: int, dim: int, classes: int, dtype: str, labeled_frac: float, seed: int,
                  spread: float = 0.8, scale: float = 10.0, chunk: int = 65536) -> None:
    """Write a seeded synthetic pool to ``path`` (chunked: never the whole pool in float64)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((classes, dim)))
    text = _unit(centres + 0.5 * rng.standard_normal((classes, dim)) / math.sqrt(dim)).astype(np.float32)
    y = rng.choice(classes, size=n, p=rng.dirichlet(np.full(classes, 2.0)))
    feats = np.lib.format.open_memmap(path / "features.tmp.npy", mode="w+", dtype=dtype, shape=(n, dim))
    probs = np.lib.format.open_memmap(path / "probs.tmp.npy", mode="w+", dtype=dtype, shape=(n, classes))
    for start in range(0, n, chunk):
        yc = y[start : start + chunk]
        x = _unit(centres[yc] + spread * rng.standard_normal((len(yc), dim)) / math.sqrt(dim)).astype(np.float32)
        logits = scale * (x @ text.T)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        feats[start : start + len(yc)] = x
        probs[start : start + len(yc)] = p
    feats.flush()
    probs.flush()
    del feats, probs
    labeled = np.zeros(n, dtype=bool)
    labeled[rng.choice(n, size=max(1, int(round(labeled_frac * n))), replace=False)] = True
    np.save(path / "labeled.npy", labeled)
    np.save(path / "labels.npy", np.where(labeled, y, -1).astype(np.int64))
    np.save(path / "text_features.npy", text)
    os.replace(path / "features.tmp.npy", path / "features.npy")
    os.replace(path / "probs.tmp.npy", path / "probs.npy")


def ensure_pool(args, n: int) -> Path:
    path = Path(args.cache_dir) / f"pool_n{n}_d{args.dim}_c{args.classes}_{args.dtype}_f{args.labeled_frac}_s{args.seed}"
    if not (path / "probs.npy").exists():
        t = time.perf_counter()
        print(f"generating pool {fmt_size(n)} x {args.dim} ({args.classes} classes, {args.dtype}) in {path}", flush=True)
        generate_pool(path, n, args.dim, args.classes, args.dtype, args.labeled_frac, args.seed)
        print(f"  generated in {time.perf_counter() - t:.1f} s", flush=True)
    return path


def load_pool(path: Path, round_: int):
    """The pool as the loop builds it: features in their stored dtype (a float16 pool stays
    float16: ``raysvc.loop.pool_rows`` hands the strategy the stored rows, no float32 copy)."""
    from raysvc.loop import pool_rows
    from raysvc.strategies import Pool

    features = np.load(path / "features.npy")
    return Pool(
        features=pool_rows(features, np.arange(len(features))),
        probs=np.load(path / "probs.npy"),
        labeled=np.load(path / "labeled.npy"),
        labels=np.load(path / "labels.npy"),
        text_features=np.load(path / "text_features.npy"),
        round=round_,
    )


# ---------------------------------------------------------------------------------------------
# worker (one measurement per process)


def _status_kb(key: str) -> int:
    return status_kb(key) or 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _watchdog(cap_gb: float) -> None:
    cap_kb = cap_gb * GB / 1024

    def run():
        while True:
            if _status_kb("VmRSS") > cap_kb:
                print(json.dumps({"status": f"stopped: RSS over --mem-cap-gb {cap_gb:g}"}), flush=True)
                os._exit(3)
            time.sleep(0.02)

    threading.Thread(target=run, daemon=True).start()


def worker(spec: dict) -> dict:
    import faiss  # noqa: F401  imported before the baseline so import costs are not counted
    import sklearn.cluster  # noqa: F401
    import torch

    if spec["device"] == "cuda" and not torch.cuda.is_available():
        return {"status": "error: --device cuda but torch sees no GPU"}
    from bench import reference
    from raysvc.strategies import make_strategy

    pool = load_pool(Path(spec["pool"]), spec["round"])
    name, variant, budget, seed = spec["strategy"], spec["variant"], spec["budget"], spec["seed"]
    out: dict = {}
    inertia: list[float] = []

    if variant == "fast":
        strategy = make_strategy(name)
        if name in KMEANS:
            fast = strategy.kmeans

            def recording(x, k, seed):
                res = fast(x, k, seed)
                inertia.append(res[2])
                return res

            strategy.kmeans = recording

        def run():
            return strategy.select(pool, budget, seed).query
    elif name in KCENTER:
        points = getattr(pool, KCENTER[name])
        b = spec["ref_budget"]

        def run():
            return reference.kcenter_greedy_reference(points, pool.labeled, b, np.random.default_rng(seed),
                                                     normalize=name == "coreset")
    elif name in BADGE:
        b = make_strategy("pcb").n_candidates(pool, budget) if name == "pcb" else budget

        def run():
            emb = reference.badge_embeddings_reference(pool.probs, pool.features)
            return reference.badge_select_reference(emb, pool.labeled, b, np.random.default_rng(seed))
    elif name in KMEANS:
        strategy = make_strategy(name)

        def recording_ref(x, k, seed):
            res = reference.kmeans_reference(x, k, seed)
            inertia.append(res[2])
            return res

        strategy.kmeans = recording_ref

        def run():
            return strategy.select(pool, budget, seed).query
    else:
        return {"status": "error: no reference"}

    base_kb = _status_kb("VmRSS")
    exact = _reset_hwm()
    _watchdog(spec["mem_cap_gb"])
    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    picks = np.asarray(run())
    elapsed = time.perf_counter() - t
    peak_kb = max(_status_kb("VmHWM"), base_kb)
    out.update(status="ok", time_s=elapsed, base_gb=base_kb * 1024 / GB, peak_gb=peak_kb * 1024 / GB,
               extra_gb=(peak_kb - base_kb) * 1024 / GB if exact else float("nan"), n_picks=len(picks))
    if spec["device"] == "cuda":
        out["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / GB
    if inertia:
        out["inertia"] = inertia[0]
    if not exact:
        out["note"] = "high-water mark not resettable: includes loading"
    picks_file = Path(spec["pool"]) / f"picks_{name}_s{seed}_b{budget}_r{spec['round']}.npy"
    if variant == "fast":
        np.save(picks_file, picks)
    elif picks_file.exists() and (name in KCENTER or name in BADGE):
        fast = np.load(picks_file)
        if name == "pcb":
            out["same"] = None  # pcb's final picks are class-balanced from the BADGE candidates
        else:
            out["same"] = bool(np.array_equal(fast[: len(picks)], picks))
    return out


def measure(args, pool: Path, strategy: str, variant: str, timeout: float, **extra) -> dict:
    spec = dict(pool=str(pool), strategy=strategy, variant=variant, budget=args.budget, seed=args.seed,
                round=args.round, device=args.device, mem_cap_gb=args.mem_cap_gb, **extra)
    env = dict(os.environ)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.Popen([sys.executable, "-m", "bench.selection", "--worker", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": f"timeout > {timeout:g} s"}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": f"error (rc {proc.returncode}): {tail[:200]}"}


# ---------------------------------------------------------------------------------------------
# references: what they would need


def kcenter_ref_plan(args, n: int, n_lab: int, width: int) -> tuple[int | None, str]:
    """Picks to run the k-center reference for (None: skip) and why."""
    n_cand = n - n_lab

    def mem(b):  # float64 copy of the pool + candidates + three (cand x centres) temporaries
        return (2 * n * width + 3 * n_cand * (n_lab + b)) * 8

    def flops(b):
        return sum(2.0 * n_cand * (n_lab + s) * width for s in range(b))

    if mem(1) > args.ref_mem_cap_gb * GB:
        return None, f"skipped: would need {mem(1) / GB:.0f} GB"
    rate = 10e9  # conservative float64 rate; only used to pick how many steps to run
    b = args.budget
    while b > 1 and (flops(b) / rate > args.ref_timeout / 2 or mem(b) > args.ref_mem_cap_gb * GB):
        b = max(1, b // 2)
    if flops(b) / rate > args.ref_timeout:
        return None, f"skipped: one step alone ~{flops(1) / rate:.0f} s"
    return b, ""


def badge_ref_need(n: int, n_lab: int, classes: int, dim: int) -> float:
    return 3.0 * (n - n_lab) * classes * dim * 8


def host_name() -> str:
    return socket.gethostname().split(".")[0] or platform.node() or "host"


def _num(v, digits=2):
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{float(v):.{digits}f}"


def run_size(args, n: int, names: list[str], done=lambda rows: None) -> list[dict]:
    pool = ensure_pool(args, n)
    n_lab = int(np.load(pool / "labeled.npy").sum())
    rows = []
    for name in names:
        print(f"[{fmt_size(n)}] {name} ...", end=" ", flush=True)
        res = measure(args, pool, name, "fast", args.timeout)
        row = dict(host=host_name(), device=args.device, n=n, dim=args.dim, classes=args.classes, dtype=args.dtype,
                   budget=args.budget, n_labeled=n_lab, round=args.round, strategy=name, status=res["status"],
                   time_s=_num(res.get("time_s")), base_gb=_num(res.get("base_gb")), peak_gb=_num(res.get("peak_gb")),
                   extra_gb=_num(res.get("extra_gb"), 3), reference="", ref_status="n/a", ref_time_s="",
                   ref_extra_gb="", speedup="", check="")
        if "gpu_peak_gb" in res:
            row["check"] = f"gpu peak {res['gpu_peak_gb']:.2f} GB"
        print(res["status"], row["time_s"], "s", flush=True)
        ok = res["status"] == "ok"
        if args.refs != "none" and ok:
            rows.append(_reference(args, pool, n, n_lab, name, res, row))
        else:
            if name in KCENTER or name in BADGE or name in KMEANS:
                row["ref_status"] = "not run (--refs none)" if args.refs == "none" else "not run (fast path failed)"
            rows.append(row)
        done(rows)
    return rows


def _reference(args, pool, n, n_lab, name, res, row) -> dict:
    lower = False
    if name in KCENTER:
        width = args.dim if KCENTER[name] == "features" else args.classes
        row["reference"] = "kcenter_greedy_reference (recompute-all, float64)"
        b, why = kcenter_ref_plan(args, n, n_lab, width)
        if b is None:
            row["ref_status"] = why
            return row
        ref = measure(args, pool, name, "reference", args.ref_timeout, ref_budget=b)
        if ref["status"] == "ok" and b < args.budget:
            ref["time_s"] *= args.budget / b
            lower = True
            ref["status"] = f"ok, first {b} picks, full time >= {args.budget}/{b} x measured"
        if "same" in ref:
            row["check"] = ("same picks" if ref["same"] else "DIFFERENT picks") + (f" (first {b})" if lower else "")
    elif name in BADGE:
        row["reference"] = "badge_select_reference on materialised embeddings"
        need = badge_ref_need(n, n_lab, args.classes, args.dim)
        if need > args.ref_mem_cap_gb * GB:
            row["ref_status"] = f"skipped: would need {need / GB:.0f} GB"
            return row
        ref = measure(args, pool, name, "reference", args.ref_timeout)
        if ref.get("same") is not None:
            row["check"] = "same picks" if ref["same"] else "DIFFERENT picks"
    elif name in KMEANS:
        row["reference"] = "strategy with sklearn KMeans (n_init=1)"
        ref = measure(args, pool, name, "reference", args.ref_timeout)
        if ref.get("inertia") and res.get("inertia"):
            row["check"] = f"inertia faiss/sklearn = {res['inertia'] / ref['inertia']:.4f}"
    else:
        return row
    row["ref_status"] = ref["status"]
    if ref["status"].startswith("ok"):
        row["ref_time_s"] = _num(ref["time_s"])
        row["ref_extra_gb"] = _num(ref.get("extra_gb"), 3)
        row["speedup"] = ("≥" if lower else "") + f"{ref['time_s'] / max(res['time_s'], 1e-9):.1f}x"
    elif ref["status"].startswith("timeout"):
        row["speedup"] = f"≥{args.ref_timeout / max(res['time_s'], 1e-9):.1f}x"
    print(f"    reference: {row['ref_status']} {row['ref_time_s']} {row['speedup']} {row['check']}", flush=True)
    return row


# ---------------------------------------------------------------------------------------------
# output


def merge_rows(path: Path, rows: list[dict]) -> list[dict]:
    key = lambda r: tuple(str(r[k]) for k in ("device", "n", "dim", "classes", "dtype", "budget", "round", "strategy"))
    old = []
    if path.exists():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    merged.sort(key=lambda r: (r["device"], int(r["n"]), int(r["dim"]), r["dtype"], r["strategy"]))
    return merged


def markdown(rows: list[dict]) -> str:
    cols = ["n", "dim", "classes", "dtype", "strategy", "status", "time_s", "base_gb", "peak_gb", "extra_gb",
            "ref_status", "ref_time_s", "ref_extra_gb", "speedup", "check"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        vals = [fmt_size(int(r["n"])) if c == "n" else str(r[c]) for c in cols]
        out.append("| " + " | ".join(v.replace("|", "/") for v in vals) + " |")
    return "\n".join(out)


def scaling(rows: list[dict]) -> str:
    """extra memory and time between consecutive pool sizes, against the pool-size ratio."""
    lines = []
    by = {}
    for r in rows:
        if r["status"] == "ok":
            by.setdefault(tuple(str(r[k]) for k in ("device", "dim", "classes", "dtype", "strategy")), []).append(r)
    for (dev, dim, classes, dtype, name), rs in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        rs.sort(key=lambda r: int(r["n"]))
        for a, b in zip(rs, rs[1:]):
            na, nb = int(a["n"]), int(b["n"])
            ea, eb = float(a["extra_gb"] or "nan"), float(b["extra_gb"] or "nan")
            ratio = eb / ea if ea > 0.005 else float("nan")
            lines.append(f"| {name} | {dtype} | {fmt_size(na)} -> {fmt_size(nb)} | {nb / na:.1f} | "
                         f"{ea:.3f} -> {eb:.3f} | {'' if math.isnan(ratio) else f'{ratio:.1f}'} | "
                         f"{float(b['time_s']) / max(float(a['time_s']), 1e-9):.1f} |")
    if not lines:
        return ""
    head = ("| strategy | dtype | sizes | pool ratio | extra GB | extra ratio | time ratio |\n"
            "|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(lines)


def write_results(args, rows: list[dict], quiet: bool = False) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"selection_{host_name()}.csv"
    rows = merge_rows(csv_path, rows)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    sizes = sorted({int(r["n"]) for r in rows})
    fp16 = [f"- {fmt_size(n)} x {d}: features {n * d * 2 / GB:.2f} GiB as float16 ({n * d * 4 / GB:.2f} float32); "
            f"probs {n * c * 2 / GB:.2f} GiB as float16 ({n * c * 4 / GB:.2f} float32)"
            for n in sizes for d, c in {(int(r["dim"]), int(r["classes"])) for r in rows}]
    fp16.append(f"- 1.28M x 1024 features: {1_280_000 * 1024 * 2 / 1e9:.2f} GB "
                f"({1_280_000 * 1024 * 2 / GB:.2f} GiB) as float16, twice that as float32")
    cpu = platform.processor() or platform.machine()
    md = [
        f"# Selection benchmark on {host_name()}",
        "",
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}; generated by `python -m bench.selection`.",
        "One selection of `budget` images with ~1% of the pool labeled, each in a fresh subprocess.",
        "time_s: wall time of `Strategy.select`. base_gb: RSS after imports and loading the pool; peak_gb: RSS high-water",
        "mark during `select` (reset through /proc/self/clear_refs, read from VmHWM = ru_maxrss); extra_gb = peak - base.",
        "tracemalloc is not used: it misses numpy/BLAS/faiss/torch C allocations.",
        "Reference: recompute-all k-center (coreset, pcoreset), materialised BADGE embeddings (badge, pcb),",
        "scikit-learn KMeans in place of faiss (cb, cbsq, typiclust, dropquery). A speedup marked >= is a lower bound",
        "(reference timed out, or ran its first b picks and was extrapolated linearly although later picks cost more).",
        "",
        markdown(rows),
        "",
        "## Memory and time growth between pool sizes",
        "",
        "Quadratic memory would show an extra ratio near the square of the pool ratio.",
        "",
        scaling(rows),
        "",
        "## Feature storage",
        "",
        *fp16,
        "",
    ]
    (out / f"selection_{host_name()}.md").write_text("\n".join(md))
    if quiet:
        return
    print("\n" + markdown(rows))
    print(f"\nwrote {csv_path} and {csv_path.with_suffix('.md')}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10k,100k,1.28M", help="comma-separated pool sizes (10k, 1.28M, 5000)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--strategies", default="all", help="comma-separated registry names, or all")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--timeout", type=float, default=900, help="seconds per fast-path measurement")
    p.add_argument("--ref-timeout", type=float, default=180, help="seconds per reference measurement")
    p.add_argument("--refs", choices=("auto", "none"), default="auto", help="auto: run references within the caps")
    p.add_argument("--ref-mem-cap-gb", type=float, default=8.0, help="skip a reference estimated to need more")
    p.add_argument("--mem-cap-gb", type=float, default=16.0, help="stop any measurement whose RSS exceeds this")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="pool storage dtype")
    p.add_argument("--labeled-frac", type=float, default=0.01)
    p.add_argument("--round", type=int, default=2, help="pool.round (cb's paper rule uses K = round x budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.environ.get("RAYSVC_BENCH_CACHE", "/tmp/raysvc_bench"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    from raysvc.strategies import STRATEGIES

    # "all": the registered strategies (a family such as sq:<strategy> wraps one of them)
    names = ([e.name for e in STRATEGIES.entries()] if args.strategies == "all"
             else [s.strip() for s in args.strategies.split(",")])
    unknown = {name for name in names if name not in STRATEGIES}
    if unknown:
        p.error(f"unknown strategies: {', '.join(sorted(unknown))}")
    rows = []
    for n in [parse_size(s) for s in args.sizes.split(",")]:
        # results are written after every measurement, so a run cut short loses nothing
        rows += run_size(args, n, names, done=lambda new: write_results(args, rows + new, quiet=True))
    write_results(args, rows)


if __name__ == "__main__":
    main()
