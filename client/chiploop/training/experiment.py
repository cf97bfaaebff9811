"""The paper's Table 1: every method on the same data, split and chip.

Each method trains in ``out/<method>/`` (resumable), all on one chip (a local
daemon with the simulator unless addresses are given). The table gives, per
method, accuracy in software (the method's own trained model), accuracy on the
chip, and the degradation (software minus chip, in points), plus the sync
integer SNN's accuracy and the chip/sync agreement; written as markdown, CSV,
JSON and PNG, with the chip-accuracy curves of all methods.
"""

from __future__ import annotations

import contextlib
import csv
import json
import statistics
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from chiploop.data.split import check_fold, num_folds
from chiploop.errors import InvalidArgument
from chiploop.training.chip import Chip, open_chip
from chiploop.training.config import METHOD_NAMES, TrainConfig
from chiploop.training.device import resolve_device
from chiploop.training.evaluate import EvalResult, paired_margin, pool_results
from chiploop.training.trainer import (
    DAEMON_LOG,
    TrainResult,
    check_folder,
    check_out,
    check_resumable,
    make_folder,
    train,
)

#: Relative cost of one epoch with its validation (bptt = 1, about 25 s on the bundled data,
#: 2 shared cores, T=5): the ANN routes see one summed frame but their converted SNNs are
#: busier on the chip; the chip-in-loop routes overlap the chip with torch.
EPOCH_COST = {"cnn": 0.5, "cnn-qat": 0.7, "bptt": 1.0, "cil-bptt": 1.2, "cil-ann": 1.0}

#: Epochs per method in the default plan (about 20 minutes on 2 cores with the bundled data).
DEFAULT_EPOCHS = {"cnn": 10, "cnn-qat": 10, "bptt": 10, "cil-bptt": 10, "cil-ann": 10}

#: The comparisons the paper makes: each chip-in-loop method against its software-only twin.
CIL_PAIRS = (("cil-bptt", "bptt"), ("cil-ann", "cnn-qat"))

HEADER = [
    "method",
    "accuracy in software (%)",
    "accuracy on chip (%)",
    "degradation (points)",
    "sync int SNN (%)",
    "chip/sync agreement (%)",
    "epochs",
    "train time (s)",
]


def plan(base: TrainConfig, methods: list[str], budget_min: float) -> dict[str, TrainConfig]:
    """One config per method; each gets a share of the budget, in proportion to its cost."""
    total = sum(EPOCH_COST[m] * DEFAULT_EPOCHS[m] for m in methods)
    configs = {}
    for m in methods:
        share = budget_min * 60.0 * EPOCH_COST[m] * DEFAULT_EPOCHS[m] / total
        configs[m] = replace(
            base,
            method=m,
            epochs=base.extra.get("epochs", {}).get(m, DEFAULT_EPOCHS[m]),
            out=str(Path(base.out) / m),
            time_limit_s=share,
            substitute_hidden=base.cil_bptt_hidden() if m == "cil-bptt" else (),  # only cil-bptt has them
        ).for_its_method()  # each option applies to the methods it concerns
    return configs


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table_rows(results: dict[str, TrainResult]) -> list[list[str]]:
    rows = []
    for name, r in results.items():
        f = r.final
        rows.append(
            [
                name,
                _pct(f.software),
                _pct(f.chip),
                "-" if f.degradation is None else f"{f.degradation:+.1f}",
                _pct(f.sync_int),
                _pct(f.agreement),
                str(len(r.history)),
                f"{r.seconds:.0f}",
            ]
        )
    return rows


def write_table(out: Path, results: dict[str, TrainResult], note: str) -> None:
    from chiploop.training.plots import (  # noqa: PLC0415 - matplotlib is slow to import
        compare_curves,
        table_png,
        weights_by_method,
    )

    rows = table_rows(results)
    md = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "table1.md").write_text("\n".join(md) + "\n\n" + note + "\n")
    with open(out / "table1.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    (out / "results.json").write_text(
        json.dumps(
            {n: {"final": r.final.as_dict(), "history": r.history, "seconds": r.seconds} for n, r in results.items()},
            indent=2,
        )
    )
    table_png(HEADER[:6], [r[:6] for r in rows], out / "table1.png", title="Table 1: software vs chip")
    compare_curves({n: r.history for n, r in results.items()}, out / "chip_accuracy.png", "val_chip", "validation accuracy on the chip")
    compare_curves({n: r.history for n, r in results.items()}, out / "software_accuracy.png", "val_software", "validation accuracy in software")
    weights_by_method({n: r.spec for n, r in results.items()}, out / "weights_by_method.png")


def run_experiment(
    base: TrainConfig,
    methods: list[str] | None = None,
    budget_min: float = 25.0,
    chip: Chip | None = None,
    stop: threading.Event | None = None,
    checked: bool = False,
) -> dict[str, TrainResult]:
    """Every method on one chip: ``chip`` if given (left open), else one opened from ``base.chip``.
    ``stop``: as for ``train`` (the method in progress stops, checkpointed; ``resume`` continues).
    ``checked``: ``methods`` is what ``check_plan`` returned for a plan that holds this one."""
    if not checked:
        methods = check_plan([base], methods, budget_min)
    configs = plan(base, methods, budget_min)
    out = make_folder(base.out)
    results: dict[str, TrainResult] = {}
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if chip is None:
            chip = stack.enter_context(_open_chip_for(base))
        for m in methods:
            results[m] = train(configs[m], chip=chip, stop=stop)
            write_table(out, results, _note(base, budget_min, time.perf_counter() - started))
    return results


def check_plan(bases: list[TrainConfig], methods: list[str] | None, budget_min: float) -> list[str]:
    """Every run of the experiments on ``bases`` checked (settings and folders) before the first
    trains: a refusal after hours of other runs would cost them. Returns the methods."""
    if not budget_min > 0:
        raise InvalidArgument("budget", f"must be > 0 minutes, got {budget_min}")
    methods = list(methods or METHOD_NAMES)
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise InvalidArgument("methods", f"unknown {', '.join(unknown)}; known: {', '.join(METHOD_NAMES)}")
    for base in bases:
        check_folder(base.out)
        for cfg in plan(base, methods, budget_min).values():
            cfg.check().check_applies()
            check_out(cfg)
            check_resumable(cfg)
    return methods


def _open_chip_for(cfg: TrainConfig) -> contextlib.AbstractContextManager[Chip]:
    """The chip the runs of ``cfg`` share, once their settings and device have passed: a bad
    setting refused after a daemon started would cost its start for nothing."""
    cfg.check()
    resolve_device(cfg.device)
    return open_chip(cfg.chip, cfg.chip_workers, log_path=None if cfg.chip else make_folder(cfg.out) / DAEMON_LOG)


def _note(cfg: TrainConfig, budget_min: float, seconds: float) -> str:
    chip = ", ".join(cfg.chip) if cfg.chip else "local daemon, built-in simulator (depth-first, event-driven)"
    return (
        f"Data: {cfg.data or 'bundled nmnist-small'}; validation split {cfg.val_fraction:.0%} (stratified, "
        f"seed {cfg.seed}); T = {cfg.bins} bins over {cfg.duration_us / 1000:.0f} ms; batch {cfg.batch_size}; "
        f"width {cfg.width:g}; {cfg.snn_recipe}; {cfg.substitution}; chip: {chip}. Software = the method's own trained model (ANN for cnn/cnn-qat/"
        f"cil-ann, the synchronous integer SNN for bptt/cil-bptt); degradation = software - chip. "
        f"Budget {budget_min:g} min, took {seconds / 60:.1f} min."
    )


def run_seeds(
    base: TrainConfig,
    methods: list[str] | None,
    seeds: list[int],
    budget_min: float = 25.0,
    stop: threading.Event | None = None,
) -> dict[int, dict[str, TrainResult]]:
    """The experiment once per seed (split, initialisation and data order all follow the seed),
    each in ``out/seed<k>/``, then ``seeds.md``/``seeds.json``: every method's accuracies per
    seed with their mean and spread, and each chip-in-loop method's margin over its twin."""
    variants = _seed_variants(base, seeds)
    return _run_repeats(Path(base.out), variants, methods, budget_min, "seed", stop)


def _seed_variants(base: TrainConfig, seeds: list[int]) -> dict[int, TrainConfig]:
    if not seeds:
        raise InvalidArgument("seeds", "give at least one seed")
    return {s: replace(base, seed=s, out=str(Path(base.out) / f"seed{s}")) for s in seeds}


def _fold_variants(base: TrainConfig, folds: list[int] | None) -> dict[int, TrainConfig]:
    """``None``: every fold of ``base``'s split."""
    folds = list(range(num_folds(base.val_fraction))) if folds is None else folds
    if not folds:
        raise InvalidArgument("folds", "give at least one fold")
    for k in folds:
        check_fold(k, base.val_fraction, field="folds")
    return {k: replace(base, fold=k, out=str(Path(base.out) / f"fold{k}")) for k in folds}


def run_folds(
    base: TrainConfig,
    methods: list[str] | None,
    folds: list[int] | None = None,
    budget_min: float = 25.0,
    stop: threading.Event | None = None,
    chip: Chip | None = None,
    checked: bool = False,
) -> dict[int, dict[str, TrainResult]]:
    """k-fold cross-validation: the experiment once per validation fold of ``base.seed``'s split
    (``None``: all ``1/val_fraction`` of them, so every sample is validated exactly once), each in
    ``out/fold<k>/``, then ``folds.md``/``folds.json``, as for seeds plus the accuracies and CIL
    margins pooled over every validated sample, with the margin's standard error."""
    variants = _fold_variants(base, folds)
    every_sample = covers_every_sample(base, folds)
    return _run_repeats(Path(base.out), variants, methods, budget_min, "fold", stop, chip, every_sample, checked)


def covers_every_sample(base: TrainConfig, folds: list[int] | None) -> bool:
    """Whether these folds of ``base``'s split validate every sample (all folds, whole splits)."""
    return base.max_val is None and (folds is None or set(folds) == set(range(num_folds(base.val_fraction))))


def run_cv(
    base: TrainConfig,
    methods: list[str] | None,
    seeds: list[int],
    folds: list[int] | None = None,
    budget_min: float = 25.0,
    stop: threading.Event | None = None,
) -> dict[int, dict[int, dict[str, TrainResult]]]:
    """``run_folds`` once per seed (each seed's own split and folds), in ``out/seed<s>/`` with its
    ``folds.md``; then ``cv.md``/``cv.json``: each seed's folds pooled, and every seed and fold
    pooled, with each CIL margin paired per sample over all of them (the figure that judges
    "cil-bptt beats bptt on the chip" on every bundled sample, several times over)."""
    out = Path(base.out)
    by_seed_cfg = _seed_variants(base, seeds)
    methods = check_plan([v for cfg in by_seed_cfg.values() for v in _fold_variants(cfg, folds).values()], methods, budget_min)
    by_seed: dict[int, dict[int, dict[str, TrainResult]]] = {}
    pooled: dict[int, dict[str, TrainResult]] = {}
    with _open_chip_for(base) as chip:  # one daemon for every seed and fold
        for seed, cfg in by_seed_cfg.items():
            by_seed[seed] = run_folds(cfg, methods, folds, budget_min, stop, chip, checked=True)
            runs = list(by_seed[seed].values())
            pooled[seed] = {m: replace(runs[0][m], final=pool_results([r[m].final for r in runs])) for m in runs[0]}
            write_repeat_table(out, pooled, "cv", covers_every_sample(base, folds))
    return by_seed


def _run_repeats(
    out: Path,
    variants: dict[int, TrainConfig],
    methods: list[str] | None,
    budget_min: float,
    kind: str,
    stop: threading.Event | None,
    chip: Chip | None = None,
    every_sample: bool = True,
    checked: bool = False,
) -> dict[int, dict[str, TrainResult]]:
    if not checked:  # once, by whoever starts the plan: it loads every resumed run's checkpoint
        methods = check_plan(list(variants.values()), methods, budget_min)
    first = next(iter(variants.values()))
    results: dict[int, dict[str, TrainResult]] = {}
    with contextlib.ExitStack() as stack:
        if chip is None:  # one daemon for every repeat
            chip = stack.enter_context(_open_chip_for(first))
        for key, cfg in variants.items():
            results[key] = run_experiment(cfg, methods, budget_min, chip=chip, stop=stop, checked=True)
            write_repeat_table(out, results, kind, every_sample)
    return results


def _mean_sd(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    sd = statistics.stdev(known) if len(known) > 1 else 0.0
    return f"{statistics.fmean(known):.1f} ± {sd:.1f}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass(frozen=True)
class _RepeatKind:
    """How one kind of repeated experiment is labelled and written."""

    label: str  # a repeat's label: "<label> <key>"; the json lists the keys as "<label>s"
    name: str  # the files: <name>.md / <name>.json
    note: str  # closing note; {n}: repeats, {validations}: their samples, {first}: the first one's, {one_sample}, {recipe}
    #: for folds: what the note says the folds validated, when they were all run on whole splits, and when not
    coverage: tuple[str, str] = ("", "")


REPEAT_KINDS = {
    "seed": _RepeatKind(
        "seed", "seeds",
        "{n} seeds; each seed draws its own validation split of {first} samples, its own initialisation and "
        "data order (the splits overlap, so the pooled standard error is optimistic). One sample is "
        "{one_sample:.1f} points. {recipe}.",
    ),
    "fold": _RepeatKind(
        "fold", "folds",
        "{n} folds of one seed's stratified split ({validations} samples): {coverage}, by models that never "
        "trained on it. {recipe}.",
        ("each sample is validated once", "part of the samples is validated (not every fold, or --max-val), each once"),
    ),
    "cv": _RepeatKind(  # each seed's cross-validation pooled into one result
        "seed", "cv",
        "{n} seeds, each cross-validated on its own split ({coverage} per seed by models that never trained on "
        "it: {validations} validations); pooled over the seeds a sample counts once per seed, by different "
        "models, so the standard error is a little optimistic. Each seed's folds: seed<k>/folds.md. {recipe}.",
        ("every sample validated once", "part of the samples validated (not every fold, or --max-val), each once"),
    ),
}  # fmt: skip


def write_repeat_table(
    out: Path, results: dict[int, dict[str, TrainResult]], kind: str, every_sample: bool = True
) -> None:
    """``<kind>s.md``/``.json`` for repeats of the experiment (``kind``: seed or fold), or
    ``cv.md``/``.json`` (``cv``: each seed's cross-validation pooled into one result).
    ``every_sample``: the folds validated every sample (all of them ran, on whole splits)."""
    how = REPEAT_KINDS[kind]
    keys = list(results)
    labels = [f"{how.label} {k}" for k in keys]
    methods = list(next(iter(results.values())))
    finals = {m: [results[k][m].final for k in keys] for m in methods}
    pct = {  # method -> column -> one value per repeat, in percent / points (None: not measured on a chip)
        m: {
            "software": [100 * f.software for f in finals[m]],
            "chip": [None if f.chip is None else 100 * f.chip for f in finals[m]],
            "degradation": [f.degradation for f in finals[m]],
        }
        for m in methods
    }
    pooled = {m: _percent(pool_results(finals[m])) for m in methods}
    header = ["method", *(f"{v}: software / chip" for v in labels), "software (mean ± sd)",
              "chip (mean ± sd)", "degradation (mean ± sd)", "pooled: software / chip"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        cells = [f"{_cell(a)} / {_cell(b)}" for a, b in zip(pct[m]["software"], pct[m]["chip"], strict=True)]
        cells += [_mean_sd(pct[m][k]) for k in ("software", "chip", "degradation")]
        cells.append(f"{_cell(pooled[m]['software'])} / {_cell(pooled[m]['chip'])}")
        lines.append("| " + " | ".join([m, *cells]) + " |")
    margins, paired = {}, {}
    for cil, twin in CIL_PAIRS:
        if cil in pct and twin in pct and None not in pct[cil]["chip"] + pct[twin]["chip"]:
            diff = [a - b for a, b in zip(pct[cil]["chip"], pct[twin]["chip"], strict=True)]
            margins[f"{cil} - {twin}"] = diff
            lines.append("")
            lines.append(
                f"On the chip, {cil} minus {twin}: " + ", ".join(f"{d:+.1f}" for d in diff)
                + f" points ({', '.join(labels)}); mean {statistics.fmean(diff):+.1f}, min {min(diff):+.1f}."
            )
            p = paired_margin(finals[cil], finals[twin])
            if p is not None:
                paired[f"{cil} - {twin}"] = p
                lines.append(
                    f"Pooled over {p['samples']} validations, paired per sample: {p['margin']:+.1f} ± "
                    f"{p['standard_error']:.1f} points (standard error); {p['only_model_right']} samples only {cil} "
                    f"got right on the chip, {p['only_baseline_right']} only {twin}."
                )
    n_val = [f.n for f in finals[methods[0]]]
    recipe = results[keys[0]][methods[0]].config.snn_recipe
    if "cil-bptt" in methods:
        recipe += f"; {results[keys[0]]['cil-bptt'].config.substitution}"
    note = how.note.format(
        n=len(keys), first=n_val[0], validations=", ".join(map(str, n_val)), one_sample=100 / max(n_val[0], 1),
        recipe=recipe, coverage=how.coverage[0 if every_sample else 1],
    )
    lines += ["", note]
    (out / f"{how.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{how.name}.json").write_text(
        json.dumps({f"{how.label}s": keys, "percent": pct, "pooled": pooled, "chip_margins": margins, "paired": paired}, indent=2)
    )


def _percent(result: EvalResult) -> dict[str, float | None]:
    return {"software": 100 * result.software, "chip": None if result.chip is None else 100 * result.chip}
