"""The files of a comparison: report.md, report.csv, report.json and report.html (its table and plots).

Per fine-tuned run it adds what a forgetting study reads first: per capability, the retention ratio (the run's
mean score over the capability's tasks divided by the reference's) and, over the capabilities it was not
trained on, the mean forgetting (reference minus run, in score points); and, where its adapter's train.json
names the capability it was trained for, the gain there.
"""
from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bench.compare import RAW_METRICS, format_cell, verdict_lines
from bench.store import atomic_write_text, write_json

UNTRAINED_MEAN = "untrained capabilities (mean)"
UNKNOWN = "unknown (no train.json beside the adapter)"


def trained_capability(run_record: dict[str, Any]) -> str | None:
    """The capability the run's adapter was trained for, from the checkpoint's train.json; None without an
    adapter, UNKNOWN for an adapter that does not say (then every capability counts as untrained, and the report
    says so)."""
    adapter = (run_record.get("model") or {}).get("adapter")
    if not adapter:
        return None
    path = Path(adapter) / "train.json"
    return (json.loads(path.read_text()).get("capability") if path.is_file() else None) or UNKNOWN


def provenance(run_record: dict[str, Any]) -> dict[str, Any]:
    """What a report's reader needs to trace a run's numbers: model and adapter hashes, data sha256s, dtype, prompt
    format, packages and git commit (the rest stays in the run's run.json)."""
    identity = run_record.get("identity", {})
    return {"model": run_record.get("model"), "fingerprint": identity.get("fingerprint"),
            "weights_sha256": identity.get("weights_sha256"), "adapter_sha256": identity.get("adapter_sha256"),
            "dtype": identity.get("dtype"), "prompt_format": identity.get("prompt_format", "chat"),
            "limit": identity.get("limit"),
            "data_sha256": {task: d.get("sha256") for task, d in (run_record.get("data") or {}).items()},
            "packages": run_record.get("packages"), "git": run_record.get("git"),
            "finished": run_record.get("finished")}


def forgetting(table: pd.DataFrame, reference: str, trained: dict[str, str | None]) -> pd.DataFrame:
    """One row per (run, capability): both means, the retention ratio, and whether it was trained for; plus one
    row per run with the means over the capabilities it was not trained for, whose `forgetting` is -delta."""
    table = table[~table["metric"].isin(RAW_METRICS)]  # drift is in nats: reported beside, never averaged in
    means = table.groupby(["run", "capability"], sort=False)["score"].mean()
    rows = []
    for run in table["run"].unique():
        if run == reference:
            continue
        untrained = []
        for capability in table["capability"].unique():
            ref, own = means[(reference, capability)], means[(run, capability)]
            is_trained = capability == trained.get(run)
            rows.append({"run": run, "capability": capability, "reference": ref, "score": own,
                         "retention": own / ref if ref > 0 else float("nan"), "delta": own - ref,
                         "trained": is_trained})
            if not is_trained:
                untrained.append((ref, own))
        ref, own = (sum(pair[i] for pair in untrained) / len(untrained) if untrained else float("nan")
                    for i in (0, 1))
        label = UNTRAINED_MEAN if trained.get(run) != UNKNOWN else f"all capabilities (mean; trained: {UNKNOWN})"
        rows.append({"run": run, "capability": label, "reference": ref, "score": own,
                     "delta": own - ref, "trained": False, "forgetting": ref - own})
    return pd.DataFrame(rows)


def drift_against_forgetting(table: pd.DataFrame, capabilities: pd.DataFrame) -> tuple[pd.DataFrame, float | None]:
    """Per fine-tuned run: its KL from the reference (the first drift task), its mean forgetting and its gain; and
    Spearman's rank correlation of KL with forgetting over the runs (three or more): does drift predict what a
    method forgets (RL's Razor, arXiv 2509.04259)?"""
    from scipy.stats import spearmanr

    if capabilities.empty:  # only drift was compared: no forgetting to set it against
        return pd.DataFrame(), None
    drift = table[table["metric"].isin(RAW_METRICS) & table["run"].isin(capabilities["run"])]
    if drift.empty:
        return pd.DataFrame(), None
    first = drift[drift["task"] == drift["task"].iloc[0]]
    rows = []
    for _, r in first.iterrows():
        own = capabilities[capabilities["run"] == r["run"]]
        forgot = own["forgetting"].dropna() if "forgetting" in own else []
        gain = own[own["trained"]]["delta"]
        rows.append({"run": r["run"], "drift_task": r["task"], "kl": r["score"],
                     "forgetting": forgot.iloc[0] if len(forgot) else float("nan"),
                     "gain": gain.iloc[0] if len(gain) else float("nan")})
    frame = pd.DataFrame(rows)
    known = frame.dropna(subset=["kl", "forgetting"])
    rho = None
    if len(known) >= 3 and known["kl"].nunique() > 1 and known["forgetting"].nunique() > 1:
        rho = float(spearmanr(known["kl"], known["forgetting"]).statistic)
    return frame, rho


def markdown(table: pd.DataFrame, reference: str, capabilities: pd.DataFrame) -> str:
    runs = list(table["run"].unique())
    lines = [f"| task | metric | n | " + " | ".join(runs) + " |", "|" + "---|" * (3 + len(runs))]
    for task, group in table.groupby("task", sort=False):
        cells = [format_cell(r, reference, "<br>") for _, r in group.iterrows()]
        first = group.iloc[0]
        lines.append(f"| {task} | {first.metric} | {first.n} | " + " | ".join(cells) + " |")
    lines += ["", f"Scores in % (drift: mean per-token KL from the seed, in nats), 95% intervals; Δ against {reference}, paired over the same examples "
                  "(* p < 0.05: McNemar's exact test for pass/fail scores, a sign-flip permutation test otherwise); "
                  "lost / gained: examples right->wrong / wrong->right; down / up: examples whose score fell / rose.",
              "", "| run | capability | reference | score | retention | Δ |", "|---|---|---|---|---|---|"]
    for _, r in capabilities.iterrows():
        retention = "" if "forgetting" in r and pd.notna(r["forgetting"]) else \
            f"{r.retention:.3f}" if pd.notna(r.retention) else "n/a (the reference scores 0)"
        lines.append(f"| {r.run} | {r.capability}{' (trained)' if r.trained else ''} | {100 * r.reference:.2f} | "
                     f"{100 * r.score:.2f} | {retention} | {100 * r.delta:+.2f} |")
    razor, rho = drift_against_forgetting(table, capabilities)
    if not razor.empty:
        lines += ["", f"| run | {razor['drift_task'].iloc[0]} KL from {reference} (nats) | mean forgetting (points) | "
                      "gain (points) |", "|---|---|---|---|"]
        lines += [f"| {r.run} | {r.kl:.4f} | {100 * r.forgetting:+.2f} | {100 * r.gain:+.2f} |"
                  for r in razor.itertuples()]
        lines += ["", f"Spearman's rank correlation of KL with mean forgetting over {len(razor)} runs: "
                      + (f"{rho:+.2f}" if rho is not None else "not defined (fewer than 3 runs, or ties)")
                      + " (does drift from the seed predict forgetting? RL's Razor, arXiv 2509.04259)."]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, reference: str, capabilities: pd.DataFrame) -> str:
    """The grouped bar chart of deltas with their intervals (and, for a method over training seeds, each seed's
    delta as a dot), the gain-vs-forgetting scatter and, where the runs were measured for drift, each run's KL from
    the reference, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = table[(table["run"] != reference) & ~table["metric"].isin(RAW_METRICS)]
    drift = table[(table["run"] != reference) & table["metric"].isin(RAW_METRICS)]
    tasks, runs = list(others["task"].unique()), list(others["run"].unique())
    razor, _ = drift_against_forgetting(table, capabilities)
    ratios = [max(len(tasks) * max(1.0, len(runs) / 3), 2), 2] + [0.4 + 0.3 * len(runs)] * drift["task"].nunique() \
        + [2, 2] * (not razor.empty)  # panels as wide as what they hold
    fig, (bars, scatter, *drift_axes) = plt.subplots(1, len(ratios), figsize=(4 + 0.8 * sum(ratios), 4.5),
                                                    gridspec_kw={"width_ratios": ratios})
    if not razor.empty:
        *drift_axes, kl_forgetting, kl_gain = drift_axes
        for axis, column, label in ((kl_forgetting, "forgetting", "mean forgetting (points)"),
                                    (kl_gain, "gain", "gain on the trained capability (points)")):
            for r in razor.itertuples():
                axis.scatter(r.kl, 100 * getattr(r, column), color=f"C{runs.index(r.run)}" if r.run in runs else "gray")
                axis.annotate(r.run, (r.kl, 100 * getattr(r, column)))
            axis.set_xlabel(f"{razor['drift_task'].iloc[0]} KL from {reference} (nats)")
            axis.set_ylabel(label)
            axis.margins(0.3)
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        rows = others[others["run"] == run].set_index("task").loc[tasks]
        x = [t + i * width for t in range(len(tasks))]
        low, high = 100 * (rows["delta"] - rows["delta_low"]), 100 * (rows["delta_high"] - rows["delta"])
        bars.bar(x, 100 * rows["delta"], width, yerr=[low, high], capsize=3, label=run)
        for xi, seeds in zip(x, rows["seed_deltas"] if "seed_deltas" in rows else ()):
            if isinstance(seeds, list):  # a method over training seeds: each seed's delta, as a dot
                bars.scatter([xi] * len(seeds), [100 * d for d in seeds], color="black", s=10, zorder=3)
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks([t + width * (len(runs) - 1) / 2 for t in range(len(tasks))], tasks, rotation=45, ha="right")
    bars.set_ylabel(f"Δ vs {reference} (points, 95% paired CI)")
    if runs:
        bars.legend(fontsize="small")
    for run in runs:
        rows = capabilities[capabilities["run"] == run]
        trained, forgot = rows[rows["trained"]], rows["forgetting"].dropna() if "forgetting" in rows else []
        if len(trained) and len(forgot):
            scatter.scatter(100 * forgot.iloc[0], 100 * trained["delta"].iloc[0], label=run)
            scatter.annotate(run, (100 * forgot.iloc[0], 100 * trained["delta"].iloc[0]))
    scatter.set_xlabel("mean forgetting: points lost on\nthe untrained capabilities")
    scatter.margins(0.3)
    for axis, (task, rows) in zip(drift_axes, drift.groupby("task", sort=False)):
        errors = [rows["score"] - rows["ci_low"], rows["ci_high"] - rows["score"]]
        axis.bar(range(len(rows)), rows["score"], yerr=errors, capsize=3,
                 color=[f"C{runs.index(r)}" if r in runs else "gray" for r in rows["run"]])
        axis.set_xticks(range(len(rows)), rows["run"], rotation=45, ha="right")
        axis.set_ylabel(f"{task}: {rows['metric'].iloc[0].upper()} from {reference} (nats, 95% CI)")
    scatter.set_ylabel("gain on the trained capability (points)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(out_dir: Path, table: pd.DataFrame, reference: str, trained: dict[str, str | None],
                 runs: dict[str, dict[str, Any]] | None = None, verdicts: list[dict[str, Any]] | None = None) -> Path:
    """All four files, each written atomically; report.json also carries each run's provenance (from the
    run.json records in `runs`) and the study's verdict (bench.compare.method_verdicts), which report.md puts first.
    Returns the directory."""
    capabilities = forgetting(table, reference, trained)
    razor, rho = drift_against_forgetting(table, capabilities)
    traced = {name: provenance(record) for name, record in (runs or {}).items()}
    said = verdict_lines(verdicts or [])
    text = ("## Verdict\n\n" + "".join(f"- {line}\n" for line in said) + "\n" if said else "") + \
        markdown(table, reference, capabilities) + "".join(
        f"\n{name}: fingerprint {p['fingerprint']}, adapter sha256 {(p['adapter_sha256'] or 'none')[:16]}, "
        f"{p['dtype']}, {p['prompt_format']} prompts, git {((p['git'] or {}).get('commit') or 'unknown')[:12]}"
        f"{' (uncommitted changes)' if (p['git'] or {}).get('dirty') else ''}\n" for name, p in traced.items())
    atomic_write_text(out_dir / "report.md", text)
    atomic_write_text(out_dir / "report.csv", table.to_csv(index=False))
    write_json(out_dir / "report.json", {
        "reference": reference, "runs": list(table["run"].unique()), "trained": trained,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tasks": json.loads(table.to_json(orient="records")),
        "capabilities": json.loads(capabilities.to_json(orient="records")),
        "verdict": verdicts or [],
        "drift_vs_forgetting": dict(zip(("runs", "spearman_kl_forgetting"), (
            json.loads(razor.to_json(orient="records")), rho))),
        "provenance": traced})
    png = _plot(table, reference, capabilities)
    html = ("<!doctype html><meta charset='utf-8'><title>forgetbench report</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:4px 8px;"
            "border-bottom:1px solid #ddd;text-align:right}td.loss{background:#f8d0c8}td.gain{background:#cfe3f6}"
            "</style>"
            f"<h1>forgetbench: {' vs '.join(table['run'].unique())}</h1>"
            + _markdown_table_html(text) + f"<img alt='deltas' src='data:image/png;base64,{png}'>")
    atomic_write_text(out_dir / "report.html", html)
    return out_dir


def _markdown_table_html(text: str) -> str:
    """Our own markdown tables as HTML (pipes, one header row, no escaping needed beyond &, <, >)."""
    html, rows = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-"):
                rows.append([c.strip() for c in line.strip("|").split("|")])
            continue
        if rows:
            head, *body = rows
            html.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(_cell_html(c, r[1] if len(r) > 1 else "") for c in r) + "</tr>"
                                  for r in body) + "</table>")
            rows = []
        if line:
            escaped = line.replace('&', '&amp;').replace('<', '&lt;')
            html.append(f"<h2>{escaped[3:]}</h2>" if line.startswith("## ") else f"<p>{escaped}</p>")
    return "".join(html)


SIGNIFICANT_DELTA = re.compile(r"Δ ([+-])[0-9.]+\*")


def _cell_html(cell: str, metric: str) -> str:
    """A comparison cell, a significant loss or gain coloured and marked in words and arrows, for readers who do
    not see the colour (a rise of drift's KL is a loss)."""
    found = SIGNIFICANT_DELTA.search(cell)
    if not found:
        return f"<td>{cell}</td>"
    loss = (found[1] == "-") != (metric in RAW_METRICS)
    label = "▼ significant loss" if loss else "▲ significant gain"
    return f"<td class='{'loss' if loss else 'gain'}'><b>{label}</b><br>{cell}</td>"
