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

from bench.analysis.compare import (LOWER_IS_BETTER, RAW_METRICS, SEEDED, delta_cell, format_cell, per_seed_runs, task_cells,
                           verdict_lines)
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
    row per run with the means over the capabilities it was not trained for, whose `forgetting` is -delta. A
    capability the reference scores 0 on has nothing to forget: it stays out of the mean (only gains could move it,
    and at the floor's few examples one flip would outweigh every real loss), as in method_verdicts."""
    table = table[~table["metric"].isin(RAW_METRICS)]  # drift is in nats: reported beside, never averaged in
    means = table.groupby(["run", "capability"], sort=False)["score"].mean()
    rows = []
    for run in table["run"].unique():
        if run == reference:
            continue
        untrained, floor = [], []
        for capability in table["capability"].unique():
            ref, own = means[(reference, capability)], means[(run, capability)]
            is_trained = capability == trained.get(run)
            rows.append({"run": run, "capability": capability, "reference": ref, "score": own,
                         "retention": own / ref if ref > 0 else float("nan"), "delta": own - ref,
                         "trained": is_trained})
            if not is_trained:
                (untrained if ref > 0 else floor).append((ref, own) if ref > 0 else capability)
        if not untrained:
            continue
        ref, own = (sum(pair[i] for pair in untrained) / len(untrained) for i in (0, 1))
        label = UNTRAINED_MEAN if trained.get(run) != UNKNOWN else f"all capabilities (mean; trained: {UNKNOWN})"
        if floor:
            label = label[:-1] + f"; without {', '.join(floor)}: the reference scores 0, nothing to forget)"
        rows.append({"run": run, "capability": label, "reference": ref, "score": own,
                     "delta": own - ref, "trained": False, "forgetting": ref - own})
    return pd.DataFrame(rows, columns=["run", "capability", "reference", "score", "retention", "delta", "trained",
                                       "forgetting"])


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


def task_table(rows: pd.DataFrame, cell) -> list[str]:
    """Rows: tasks; columns: runs (or pairs of methods), each cell `cell(row)`."""
    columns, body = task_cells(rows, cell)
    return [f"| task | metric | n | " + " | ".join(columns) + " |", "|" + "---|" * (3 + len(columns))] + [
        f"| {first.task} | {first.metric} | {first.n} | " + " | ".join(cells) + " |" for first, cells in body]


def capability_table(capabilities: pd.DataFrame) -> list[str]:
    lines = ["| run | capability | reference | score | retention | Δ |", "|---|---|---|---|---|---|"]
    for _, r in capabilities.iterrows():
        retention = "" if "forgetting" in r and pd.notna(r["forgetting"]) else \
            f"{r.retention:.3f}" if pd.notna(r.retention) else "n/a (the reference scores 0)"
        lines.append(f"| {r.run} | {r.capability}{' (trained)' if r.trained else ''} | {100 * r.reference:.2f} | "
                     f"{100 * r.score:.2f} | {retention} | {100 * r.delta:+.2f} |")
    return lines


def instruction_table(instructions: pd.DataFrame, reference: str) -> list[str]:
    """Followed / total per kind of instruction (strict), the reference first, each other run with its change in
    points; a method over training seeds pools its seeds (METHOD-sN under METHOD)."""
    lines = []
    for task, rows in instructions.groupby("task", sort=False):
        rows = rows.assign(run=[r if r == reference or SEEDED.match(r) is None else SEEDED.match(r)["stem"]
                                for r in rows["run"]])
        counts = rows.groupby(["instruction", "run"], sort=False)[["strict", "total"]].sum()
        runs = [reference] + [r for r in dict.fromkeys(rows["run"]) if r != reference]
        caps = rows.groupby("run", sort=False)["max_new_tokens"].first()
        caps = str(caps.iloc[0]) if caps.nunique() == 1 else ", ".join(f"{c} ({r})" for r, c in caps.items())
        lines += [f"| {task}: instruction | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
        for instruction in sorted(rows["instruction"].unique()):
            cells = []
            for run in runs:
                if (instruction, run) not in counts.index:
                    cells.append("")
                    continue
                followed, total = counts.loc[(instruction, run)]
                cell = f"{followed}/{total}"
                if run != reference and (instruction, reference) in counts.index:
                    ref_followed, ref_total = counts.loc[(instruction, reference)]
                    cell += f" ({100 * (followed / total - ref_followed / ref_total):+.1f})"
                cells.append(cell)
            lines.append(f"| {instruction} | " + " | ".join(cells) + " |")
        lines += ["", f"Instructions followed (strict) / given, by kind; in brackets the change from {reference} in "
                      f"points. At most {caps} new tokens per prompt (lm-eval's IFEval: 1280).", ""]
    return lines


def markdown(table: pd.DataFrame, reference: str, capabilities: pd.DataFrame, pairs: pd.DataFrame | None = None,
             instructions: pd.DataFrame | None = None) -> str:
    """The report's body: every method against the reference, the methods head to head, per capability, drift
    against forgetting; each training seed's own columns folded away below."""
    seeds = per_seed_runs(list(table["run"].unique()))
    main = table[~table["run"].isin(seeds)]
    against = lambda r: format_cell(r, reference, "<br>")
    lines = [f"## Against {reference}", "", *task_table(main, against), "",
             f"Scores in % (drift: mean per-token KL from the seed, in nats), 95% intervals (Wilson for pass/fail "
             f"scores); Δ against {reference}, paired over the same examples (* p < 0.05: McNemar's exact test for "
             "pass/fail scores, a sign-flip permutation test otherwise; a method over training seeds: a bootstrap "
             "over seeds and examples, the examples drawn once for all seeds); lost / gained: examples right->wrong / wrong->right; down / up: "
             "examples whose score fell / rose; detectable: the smallest Δ these examples (and seeds) detect at 5% "
             "with 80% power."]
    if pairs is not None and not pairs.empty:
        lines += ["", "## Head to head", "", *task_table(pairs, lambda r: delta_cell(r, "<br>")), "",
                  "B vs A: Δ = B minus A, paired over the same examples (methods over training seeds: paired by seed "
                  "number, the same bootstrap), tests as above."]
    lines += ["", "## Capabilities", "", *capability_table(capabilities[~capabilities["run"].isin(seeds)])]
    if instructions is not None and not instructions.empty:
        lines += ["", "## Instruction following by kind", "", *instruction_table(instructions, reference)]
    razor, rho = drift_against_forgetting(table, capabilities)
    if not razor.empty:
        lines += ["", "## Drift and forgetting", "",
                  f"| run | {razor['drift_task'].iloc[0]} KL from {reference} (nats) | mean forgetting (points) | "
                  "gain (points) |", "|---|---|---|---|"]
        lines += [f"| {r.run} | {r.kl:.4f} | {100 * r.forgetting:+.2f} | {100 * r.gain:+.2f} |"
                  for r in razor.itertuples()]
        lines += ["", f"Spearman's rank correlation of KL with mean forgetting over {len(razor)} runs: "
                      + (f"{rho:+.2f}" if rho is not None else "not defined (fewer than 3 runs, or ties)")
                      + " (does drift from the seed predict forgetting? RL's Razor, arXiv 2509.04259)."]
    if seeds:
        lines += ["", "<details><summary>Each training seed</summary>", "",
                  *task_table(table[table["run"].isin(seeds | {reference})], against), "",
                  *capability_table(capabilities[capabilities["run"].isin(seeds)]), "", "</details>"]
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, reference: str, capabilities: pd.DataFrame) -> str:
    """As base64 PNG: across the top, the deltas to the reference with their intervals (for a method over training
    seeds, each seed's delta as a dot); below, gain against forgetting, each drift task's KL, and KL against
    forgetting and gain. One colour per run in every panel, named once in the top legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = table[(table["run"] != reference) & ~table["metric"].isin(RAW_METRICS)]
    drift = table[(table["run"] != reference) & table["metric"].isin(RAW_METRICS)]
    tasks, runs = list(others["task"].unique()), list(others["run"].unique())
    colour = {run: f"C{i}" for i, run in enumerate(runs)} | {run: f"C{len(runs) + i}" for i, run in
                                                            enumerate(r for r in drift["run"].unique() if r not in runs)}
    razor, _ = drift_against_forgetting(table, capabilities)
    below = 1 + drift["task"].nunique() + 2 * (not razor.empty)
    fig = plt.figure(figsize=(12.5, 8))
    grid = fig.add_gridspec(2, below, height_ratios=[1.2, 1])
    bars = fig.add_subplot(grid[0, :])
    scatter, *small = (fig.add_subplot(grid[1, i]) for i in range(below))
    width = 0.8 / max(len(runs), 1)
    for i, run in enumerate(runs):
        rows = others[others["run"] == run].set_index("task").loc[tasks]
        x = [t + i * width for t in range(len(tasks))]
        low, high = 100 * (rows["delta"] - rows["delta_low"]), 100 * (rows["delta_high"] - rows["delta"])
        bars.bar(x, 100 * rows["delta"], width, yerr=[low, high], capsize=3, label=run, color=colour[run])
        for xi, seeds in zip(x, rows["seed_deltas"] if "seed_deltas" in rows else ()):
            if isinstance(seeds, list):  # a method over training seeds: each seed's delta, as a dot
                bars.scatter([xi] * len(seeds), [100 * d for d in seeds], color="black", s=12, zorder=3,
                             label="one training seed" if "one training seed" not in
                             bars.get_legend_handles_labels()[1] else None)
    bars.axhline(0, color="black", linewidth=0.8)
    bars.set_xticks([t + width * (len(runs) - 1) / 2 for t in range(len(tasks))], tasks)
    bars.set_ylabel(f"Δ vs {reference}\n(points, 95% paired CI)")
    if runs:
        bars.legend(fontsize="small", loc="best")
    for run in runs:
        rows = capabilities[capabilities["run"] == run]
        trained, forgot = rows[rows["trained"]], rows["forgetting"].dropna() if "forgetting" in rows else []
        if len(trained) and len(forgot):
            scatter.scatter(100 * forgot.iloc[0], 100 * trained["delta"].iloc[0], color=colour[run], s=40)
    scatter.set_xlabel("mean forgetting (points lost\non the untrained capabilities)")
    scatter.set_ylabel("gain on the trained\ncapability (points)")
    scatter.margins(0.3)
    drift_axes, razor_axes = small[:drift["task"].nunique()], small[drift["task"].nunique():]
    for axis, (task, rows) in zip(drift_axes, drift.groupby("task", sort=False)):
        errors = [rows["score"] - rows["ci_low"], rows["ci_high"] - rows["score"]]
        axis.bar(range(len(rows)), rows["score"], yerr=errors, capsize=3, color=[colour[r] for r in rows["run"]])
        axis.set_xticks([])
        axis.set_xlabel("runs (colours as above)")
        axis.set_ylabel(f"{task}: {rows['metric'].iloc[0].upper()} from\n{reference} (nats, 95% CI)")
    for axis, column, label in zip(razor_axes, ("forgetting", "gain"),
                                   ("mean forgetting (points)", "gain on the trained\ncapability (points)")):
        for r in razor.itertuples():
            axis.scatter(r.kl, 100 * getattr(r, column), color=colour.get(r.run, "gray"), s=40)
        axis.set_xlabel(f"{razor['drift_task'].iloc[0]} KL (nats)")
        axis.set_ylabel(label)
        axis.margins(0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(out_dir: Path, table: pd.DataFrame, reference: str, trained: dict[str, str | None],
                 runs: dict[str, dict[str, Any]] | None = None, verdicts: list[dict[str, Any]] | None = None,
                 pairs: pd.DataFrame | None = None, instructions: pd.DataFrame | None = None) -> Path:
    """All four files, each written atomically; report.json also carries each run's provenance (from the
    run.json records in `runs`), the study's verdict (bench.analysis.compare.method_verdicts), which report.md puts first, and
    the methods head to head (bench.analysis.compare.method_pairs). Returns the directory."""
    capabilities = forgetting(table, reference, trained)
    razor, rho = drift_against_forgetting(table, capabilities)
    traced = {name: provenance(record) for name, record in (runs or {}).items()}
    said = verdict_lines(verdicts or [])
    verdict = "## Verdict\n\n" + "".join(f"- {line}\n" for line in said) + "\n" if said else ""
    body = markdown(table, reference, capabilities, pairs, instructions) + "".join(
        f"\n{name}: fingerprint {p['fingerprint']}, adapter sha256 {(p['adapter_sha256'] or 'none')[:16]}, "
        f"{p['dtype']}, {p['prompt_format']} prompts, git {((p['git'] or {}).get('commit') or 'unknown')[:12]}"
        f"{' (uncommitted changes)' if (p['git'] or {}).get('dirty') else ''}\n" for name, p in traced.items())
    atomic_write_text(out_dir / "report.md", verdict + body)
    atomic_write_text(out_dir / "report.csv", table.to_csv(index=False))
    write_json(out_dir / "report.json", {
        "reference": reference, "runs": list(table["run"].unique()), "trained": trained,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tasks": json.loads(table.to_json(orient="records")),
        "capabilities": json.loads(capabilities.to_json(orient="records")),
        "verdict": verdicts or [],
        "head_to_head": json.loads(pairs.to_json(orient="records")) if pairs is not None else [],
        "by_instruction": json.loads(instructions.to_json(orient="records")) if instructions is not None else [],
        "drift_vs_forgetting": dict(zip(("runs", "spearman_kl_forgetting"), (
            json.loads(razor.to_json(orient="records")), rho))),
        "provenance": traced})
    seeds = per_seed_runs(list(table["run"].unique()))
    main = table[~table["run"].isin(seeds)]
    png = _plot(main, reference, capabilities[~capabilities["run"].isin(seeds)])
    methods = [r for r in main["run"].unique() if r != reference]
    html = ("<!doctype html><meta charset='utf-8'><title>forgetbench report: " + _escape(out_dir.name) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1360px;margin:1.5em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
            "text-align:right;vertical-align:top;font-size:13px}td:first-child,th:first-child{text-align:left}"
            "td.loss{background:#f8d0c8}td.gain{background:#cfe3f6}img{max-width:100%}p{max-width:1100px}</style>"
            f"<h1>forgetbench report: {_escape(out_dir.name)}</h1>"
            f"<p>reference: {_escape(reference)}; methods: {_escape(', '.join(methods))}</p>"
            + _markdown_table_html(verdict) + f"<img alt='deltas against {_escape(reference)}' "
            f"src='data:image/png;base64,{png}'>" + _markdown_table_html(body))
    atomic_write_text(out_dir / "report.html", html)
    return out_dir


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _markdown_table_html(text: str) -> str:
    """Our own markdown as HTML: tables (pipes, one header row), `## ` headings, `- ` lists, paragraphs."""
    html, rows, items = [], [], []
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
        if line.startswith("- "):
            items.append(f"<li>{_escape(line[2:])}</li>")
            continue
        if items:
            html.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith(("<details>", "</details>")):  # our own folding, as GitHub renders it
            html.append(line)
        elif line:
            html.append(f"<h2>{_escape(line[3:])}</h2>" if line.startswith("## ") else f"<p>{_escape(line)}</p>")
    return "".join(html)


SIGNIFICANT_DELTA = re.compile(r"Δ ([+-])[0-9.]+\*")


def _cell_html(cell: str, metric: str) -> str:
    """A comparison cell, a significant loss or gain coloured and marked in words and arrows, for readers who do
    not see the colour (a rise of drift's KL is a loss)."""
    found = SIGNIFICANT_DELTA.search(cell)
    if not found:
        return f"<td>{cell}</td>"
    loss = (found[1] == "-") != (metric in LOWER_IS_BETTER)
    label = "▼ significant loss" if loss else "▲ significant gain"
    return f"<td class='{'loss' if loss else 'gain'}'><b>{label}</b><br>{cell}</td>"
