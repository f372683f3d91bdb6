"""Every way a comparison is shown: the console's tables, report.md, report.csv, report.json and report.html (its
tables and plots). Each renders a Comparison (bench/analysis/compare.py) and decides nothing: which delta is
significant, what a method forgets and how the methods rank are fields of the comparison; here are only the
formatting choices (units, digits, order, words, colours)."""
from __future__ import annotations

import base64
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pandas as pd

from bench.analysis.compare import LOWER_IS_BETTER, RAW_METRICS, TRAINING_SEED_RUN, Comparison, scale
from bench.analysis.gate import NOT_GATED, Verdict
from bench.machine import describe, same_rounding
from bench.store import atomic_write_text, write_json


def provenance(run_record: dict[str, Any]) -> dict[str, Any]:
    """What a report's reader needs to trace a run's numbers: model and adapter hashes, data sha256s, dtype, prompt
    format, packages, git commit and machine (the rest stays in the run's run.json)."""
    identity = run_record.get("identity", {})
    return {"model": run_record.get("model"), "fingerprint": identity.get("fingerprint"),
            "weights_sha256": identity.get("weights_sha256"), "adapter_sha256": identity.get("adapter_sha256"),
            "dtype": identity.get("dtype"), "prompt_format": identity.get("prompt_format", "chat"),
            "limit": identity.get("limit"),
            "data_sha256": {task: d.get("sha256") for task, d in (run_record.get("data") or {}).items()},
            "packages": run_record.get("packages"), "git": run_record.get("git"), "machine": run_record.get("machine"),
            "finished": run_record.get("finished"),
            "peak_rss_mib": max((run_record.get("peak_rss_mib") or {}).values(), default=None)}


def format_cell(row: Any, reference: str, newline: str) -> str:
    """One run's cell of a comparison table: score [CI]; for a run other than the reference, then its delta_cell."""
    k = scale(row.metric)
    cell = f"{k * row.score:.2f} [{k * row.ci_low:.2f}, {k * row.ci_high:.2f}]"
    return cell + newline + delta_cell(row, newline) if row.run != reference else cell


def delta_cell(row: Any, newline: str) -> str:
    """A paired delta [CI] with its p-value (* below 0.05), then how many examples changed each way (for a score that
    is not pass/fail, such as drift's KL, "up" and "down" carry no judgement), each training seed's delta, then the
    smallest delta its n detects at 5% with 80% power."""
    k = scale(row.metric)
    cell = (f"Δ {k * row.delta:+.2f}{'*' if row.significant else ''} [{k * row.delta_low:+.2f}, "
            f"{k * row.delta_high:+.2f}] p={row.p_value:.3g}"
            f"{newline}{changes(row.right_to_wrong, row.wrong_to_right, row.get('pass_fail') is True)}")
    if isinstance(row.get("seed_deltas"), list):
        cell += (f"{newline}seeds {', '.join(f's{n}' for n in row.seed_numbers)}: "
                 f"{', '.join(f'{k * d:+.2f}' for d in row.seed_deltas)} "
                 f"({int(row.seeds_agreeing)}/{len(row.seed_deltas)} agree in sign)")
    if pd.notna(row.get("detectable")):
        cell += f"{newline}detectable ±{k * row.detectable:.2f}"
    return cell


def task_cells(rows: pd.DataFrame, cell) -> tuple[list[str], list[tuple[Any, list[str]]]]:
    """A comparison as a table: its columns (the runs, in order) and per task its first row and one cell per column,
    `cell(row)` ("" where a column has no row for the task)."""
    columns = list(rows["run"].unique())
    body = []
    for _, group in rows.groupby("task", sort=False):
        cells = {r.run: cell(r) for _, r in group.iterrows()}
        body.append((group.iloc[0], [cells.get(column, "") for column in columns]))
    return columns, body


def changes(down: int, up: int, pass_fail: bool) -> str:
    """How many examples' scores went down and up: lost / gained for pass/fail scores."""
    return f"{int(down)} lost / {int(up)} gained" if pass_fail else f"{int(down)} down / {int(up)} up"


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    """The study's verdict in words: per pair, who forgets less and who drifts less, and how sure the bootstrap is."""
    lines = []
    for v in verdicts:
        for key, unit, scale_, verb in (("forgetting", "points", 100.0, "forgets less on its untrained capabilities"),
                                        ("drift", "nats", 1.0, "drifts less from the reference")):
            if f"{key}_diff" not in v:
                continue
            if v[f"{key}_diff"] == 0:
                lines.append(f"{v['a']} and {v['b']} do not differ in {key}: {scale_ * v[f'{key}_a']:.2f} {unit} each")
                continue
            less, more = (v["a"], v["b"]) if v[f"{key}_diff"] < 0 else (v["b"], v["a"])
            p = v[f"p_a_less_{key}"] if less == v["a"] else 1 - v[f"p_a_less_{key}"]  # ties count half to each
            lines.append(f"{less} {verb} than {more}: {scale_ * v[f'{key}_a']:.2f} ({v['a']}) vs "
                         f"{scale_ * v[f'{key}_b']:.2f} ({v['b']}) {unit}, difference {scale_ * v[f'{key}_diff']:+.2f} "
                         f"[{scale_ * v[f'{key}_low']:+.2f}, {scale_ * v[f'{key}_high']:+.2f}]; the order holds in "
                         f"{100 * p:.0f}% of bootstrap replicates"
                         + pair_caveat(v))
    return lines


def pair_caveat(verdict: dict[str, Any]) -> str:
    """What a pair's bootstrap leaves out where a side has one training seed (`bootstrap_over`, for a pair)."""
    single = [verdict[side] for side in ("a", "b") if verdict[f"seeds_{side}"] == 1]
    if len(single) == 2:
        return " (one training seed each: over examples only, not over training runs)"
    if single:
        return f" ({single[0]} has one training seed: the spread between its seeds is not in this interval)"
    return ""


def task_table(rows: pd.DataFrame, cell) -> list[str]:
    """Rows: tasks; columns: runs (or pairs of methods), each cell `cell(row)`."""
    columns, body = task_cells(rows, cell)
    return ["| task | metric | n | " + " | ".join(columns) + " |", "|" + "---|" * (3 + len(columns))] + [
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
        rows = rows.assign(run=[r if r == reference or TRAINING_SEED_RUN.match(r) is None else TRAINING_SEED_RUN.match(r)["stem"]
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


def bootstrap_over(entries: list[dict[str, Any]]) -> str:
    """What the joint bootstrap resamples; a method of one training seed beside methods of several varies by its
    examples only, so its interval leaves out the seed-to-seed spread the others' include: said, not silent."""
    single = [e["method"] for e in entries if e["seeds"] == 1]
    if len(single) == len(entries):
        return "examples only (one training seed each)"
    if not single:
        return "training seeds and examples"
    return (f"training seeds and examples, but examples only for {', '.join(single)} (one training seed: "
            f"{'its interval leaves' if len(single) == 1 else 'their intervals leave'} out the spread between seeds)")


def ranking_lines(ranking: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The ranking in words, least forgetting and least drift first, each method with its interval, the probability
    that it is the least of all, and the tasks it rests on."""
    lines = []
    for key, unit, k, what in (("forgetting", "points", 100.0, "Forgetting on the untrained capabilities"),
                               ("drift", "nats", 1.0, "Drift from the reference")):
        entries = ranking.get(key, [])
        if not entries:
            continue
        ranked = "; ".join(
            f"{i + 1}. {e['method']} {k * e[key]:.2f} [{k * e['low']:.2f}, {k * e['high']:.2f}] (least in "
            f"{100 * e['p_least']:.0f}%)" for i, e in enumerate(entries))
        first = entries[0]
        rests = ", ".join(f"{task} (n={n})" for task, n in first["tasks"].items())
        losses = "; ".join(f"{e['method']}: {', '.join(e['significant_losses'])}" for e in entries
                           if e["significant_losses"])
        uncorrected = "; ".join(f"{e['method']}: {', '.join(e['significant_losses_uncorrected'])}" for e in entries
                                if e.get("significant_losses_uncorrected"))
        over = bootstrap_over(entries)
        said = "" if key == "drift" else (  # drift is one task, whose KL above 0 is the measure itself
            f"; single-task losses against the reference significant after Holm across each method's tasks: {losses}"
            if losses else "; no single task's loss against the reference is significant after Holm across each "
                           "method's tasks") + (f" (before Holm: {uncorrected})" if uncorrected != losses else "")
        lines.append(f"{what} ({unit}, least first): {ranked}. Least-of-all probabilities from one joint bootstrap "
                     f"over {over}; it rests on {rests}{said}.")
    return lines


def judge_label(judge: dict[str, Any]) -> str:
    """Beside a judged task's cells: its judge's agreement with AlpacaEval 2's judge, the longer output's, and
    whether its win rates inform."""
    agreement = judge["agreement"]
    if agreement is None or agreement.get("run") is None:
        return "judge agreement unmeasured: not informative"
    said = (f"judge agrees {100 * agreement['agreement']:.1f}% [{100 * agreement['ci_low']:.1f}, "
            f"{100 * agreement['ci_high']:.1f}], longer output {100 * agreement['longer_output']:.1f}%")
    return said + ("; not informative" if judge["not_informative"] else "")


def judge_lines(judges: dict[str, dict[str, Any]]) -> list[str]:
    """Each judged task's judge in words: why its win rates do or do not inform."""
    lines = []
    for task, judge in judges.items():
        agreement = judge["agreement"]
        if judge["not_informative"]:
            lines.append(f"{task}: not informative: {judge['not_informative']}. Its rows are shown, left out of mean "
                         f"forgetting and the ranking, and not gated; judge with an API judge (docs/helpfulness.md).")
        else:
            lines.append(f"{task}: the judge agrees with AlpacaEval 2's judge on {100 * agreement['agreement']:.1f}% "
                         f"[{100 * agreement['ci_low']:.1f}, {100 * agreement['ci_high']:.1f}] of {agreement['n']} "
                         f"pairs, above the longer output's {100 * agreement['longer_output']:.1f}% (difference "
                         f"{100 * agreement['minus_longer']:+.1f} [{100 * agreement['minus_longer_low']:+.1f}, "
                         f"{100 * agreement['minus_longer_high']:+.1f}]; run {agreement['run']}).")
    return lines


def _labelled(rows: pd.DataFrame, judges: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Rows whose judged tasks' names carry their judge's label."""
    return rows.assign(task=[f"{t} ({judge_label(judges[t])})" if t in judges else t for t in rows["task"]])


def _against_caption(reference: str) -> str:
    return (f"Scores in % (drift: mean per-token KL from the seed, in nats), 95% intervals (Wilson for a run's "
            f"pass/fail scores; for a method over training seeds, the seed-and-example bootstrap's); Δ against "
            f"{reference}, paired over the same examples (* p < 0.05: McNemar's exact test for pass/fail scores, a "
            "sign-flip permutation test otherwise; a method over training seeds: the larger p of a bootstrap over "
            "seeds and examples, the examples drawn once for all seeds, and a sign-flip test over the examples of "
            "each one's delta averaged over seeds); lost / gained: examples right->wrong / wrong->right (over "
            "training seeds: summed over seeds, so one example counts once a seed); down / up: examples whose score "
            "fell / rose; detectable: the smallest Δ these examples (and seeds) detect at 5% with 80% power.")


PAIRS_CAPTION = ("B vs A: Δ = B minus A, paired over the same examples (methods over training seeds: paired by seed "
                 "number, the same bootstrap), tests as above.")


def _sections(comparison: Comparison) -> list[tuple[str, Any]]:
    """The report's body in order, each ("tasks", (rows, cell)) for a table of tasks by runs, or ("md", lines)."""
    c, reference = comparison, comparison.reference
    main = _labelled(c.rows[~c.rows["run"].isin(c.training_seed_runs)], c.judges)
    against = lambda r, newline: format_cell(r, reference, newline)
    sections: list[tuple[str, Any]] = [("md", [f"## Against {reference}", ""]), ("tasks", (main, against)),
                                       ("md", ["", _against_caption(reference)])]
    if c.judges:
        sections.append(("md", ["", "## Judges", "", *(f"- {line}" for line in judge_lines(c.judges))]))
    if not c.pairs.empty:
        sections += [("md", ["", "## Head to head", ""]), ("tasks", (_labelled(c.pairs, c.judges), delta_cell)),
                     ("md", ["", PAIRS_CAPTION])]
    lines = ["", "## Capabilities", "", *capability_table(c.capabilities[~c.capabilities["run"].isin(c.training_seed_runs)])]
    if not c.instructions.empty:
        lines += ["", "## Instruction following by kind", "", *instruction_table(c.instructions, reference)]
    if not c.drift.empty:
        lines += ["", "## Drift and forgetting", "",
                  f"| run | {c.drift['drift_task'].iloc[0]} KL from {reference} (nats) | mean forgetting (points) | "
                  "gain (points) |", "|---|---|---|---|"]
        lines += [f"| {r.run} | {r.kl:.4f} | {100 * r.forgetting:+.2f} | {100 * r.gain:+.2f} |"
                  for r in c.drift.itertuples()]
        lines += ["", f"Spearman's rank correlation of KL with mean forgetting over {len(c.drift_rho_runs)} training runs"
                      + (" (each seed's; a method's mean over its seeds is not a run of its own)"
                         if c.training_seed_runs else "") + ": "
                      + (f"{c.drift_rho:+.2f}" if c.drift_rho is not None else "not defined (fewer than 3 runs, or ties)")
                      + " (does drift from the seed predict forgetting? RL's Razor, arXiv 2509.04259)."]
    sections.append(("md", lines))
    if c.training_seed_runs:
        sections += [("md", ["", "<details><summary>Each training seed</summary>", ""]),
                     ("tasks", (c.rows[c.rows["run"].isin(c.training_seed_runs | {reference})], against)),
                     ("md", ["", *capability_table(c.capabilities[c.capabilities["run"].isin(c.training_seed_runs)]), "",
                             "</details>"])]
    return sections


def markdown(comparison: Comparison) -> str:
    """The report's body: every method against the reference, the methods head to head, per capability, drift
    against forgetting; each training seed's own columns folded away below."""
    lines: list[str] = []
    for kind, content in _sections(comparison):
        if kind == "tasks":
            rows, cell = content
            lines += task_table(rows, lambda r: cell(r, "<br>"))
        else:
            lines += content
    return "\n".join(lines[1:] if lines and lines[0] == "" else lines) + "\n"


def verdict_markdown(comparison: Comparison) -> str:
    """The verdict, first in the report: the ranking, then each pair of methods."""
    ranked, pairs = ranking_lines(comparison.ranking), verdict_lines(comparison.verdicts)
    if not ranked and not pairs:
        return ""
    text = "## Verdict\n\n" + "".join(f"- {line}\n" for line in ranked)
    if pairs:
        text += ("\n### Each pair of methods\n\n" if ranked else "") + "".join(f"- {line}\n" for line in pairs)
    return text + "\n"


def provenance_lines(comparison: Comparison) -> str:
    """Each run's provenance line, after a warning where the runs were made on machines that round differently (a
    paired delta then holds rounding as well as training)."""
    lines = []
    machines = [(name, m) for name, record in comparison.records.items()
                for m in record.get("shard_machines") or [record.get("machine")] if m]
    if any(not same_rounding(m, other) for _, m in machines for _, other in machines):
        lines.append("\n**Runs made on different machines** (their floats may round differently, bf16 most of all): "
                     + "; ".join(f"{name}: {describe(m)}" for name, m in machines) + "\n")
    for name, record in comparison.records.items():
        p = provenance(record)
        git = p["git"] or {}
        peak = f", peak RSS {p['peak_rss_mib'] / 1024:.1f} GiB" if p["peak_rss_mib"] else ""
        on = f", on {describe(p['machine'])}" if p["machine"] else ""
        lines.append(f"\n{name}: fingerprint {p['fingerprint']}, adapter sha256 {(p['adapter_sha256'] or 'none')[:16]}, "
                     f"{p['dtype']}, {p['prompt_format']} prompts, git {(git.get('commit') or 'unknown')[:12]}"
                     f"{' (uncommitted changes)' if git.get('dirty') else ''}{peak}{on}\n")
    return "".join(lines)


def report_json(comparison: Comparison) -> dict[str, Any]:
    c = comparison
    records = lambda frame: json.loads(frame.to_json(orient="records", double_precision=15))
    return {"reference": c.reference, "runs": list(c.rows["run"].unique()), "trained": c.trained,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tasks": records(c.rows),
            "capabilities": records(c.capabilities), "ranking": c.ranking, "verdict": c.verdicts,
            "head_to_head": records(c.pairs), "by_instruction": records(c.instructions),
            "drift_vs_forgetting": {"runs": records(c.drift), "spearman_kl_forgetting": c.drift_rho,
                                    "spearman_runs": c.drift_rho_runs},
            "judges": c.judges,
            "provenance": {name: provenance(record) for name, record in c.records.items()}}


def write_report(out_dir: Path, comparison: Comparison) -> Path:
    """report.md (the verdict first), report.csv (every row), report.json (every figure and each run's provenance)
    and report.html, each written atomically. Returns the directory."""
    c = comparison
    atomic_write_text(out_dir / "report.md", verdict_markdown(c) + markdown(c) + provenance_lines(c))
    atomic_write_text(out_dir / "report.csv", c.rows.to_csv(index=False))
    write_json(out_dir / "report.json", report_json(c))
    atomic_write_text(out_dir / "report.html", html(out_dir.name, c))
    return out_dir


def html(title: str, comparison: Comparison) -> str:
    """One page: the ranking, the pairs folded, the plot, then the report's tables, a significant loss or gain
    coloured and marked in words."""
    c = comparison
    png = _plot(c)
    parts = []
    for kind, content in _sections(c):
        parts.append(_task_table_html(*content) if kind == "tasks" else _markdown_html("\n".join(content)))
    ranked, pairs = ranking_lines(c.ranking), verdict_lines(c.verdicts)
    verdict = ("<h2>Verdict</h2><ul>" + "".join(f"<li>{escape(line)}</li>" for line in ranked) + "</ul>"
               if ranked else "")
    if pairs:
        verdict += (f"<details{'' if ranked else ' open'}><summary>Each pair of methods</summary><ul>"
                    + "".join(f"<li>{escape(line)}</li>" for line in pairs) + "</ul></details>")
    return ("<!doctype html><meta charset='utf-8'><title>forgetbench report: " + escape(title) + "</title>"
            "<style>body{font-family:sans-serif;max-width:1360px;margin:1.5em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:4px 8px;border-bottom:1px solid #ddd;"
            "text-align:right;vertical-align:top;font-size:13px}td:first-child,th:first-child{text-align:left}"
            "td.loss{background:#f8d0c8}td.gain{background:#cfe3f6}img{max-width:100%}p{max-width:1100px}</style>"
            f"<h1>forgetbench report: {escape(title)}</h1>"
            f"<p>reference: {escape(c.reference)}; methods: {escape(', '.join(c.methods))}</p>"
            + verdict + f"<img alt='deltas against {escape(c.reference)}' src='data:image/png;base64,{png}'>"
            + "".join(parts) + _markdown_html(provenance_lines(c)))


def _task_table_html(rows: pd.DataFrame, cell) -> str:
    """A table of tasks by runs; a cell whose delta is significant is coloured and says loss or gain in words, for
    readers who do not see the colour (a rise of drift's KL is a loss)."""
    columns, body = task_cells(rows, lambda r: r)
    head = "".join(f"<th>{escape(h)}</th>" for h in ["task", "metric", "n", *columns])
    lines = []
    for first, row_cells in body:
        tds = [f"<td>{escape(str(v))}</td>" for v in (first.task, first.metric, first.n)]
        for r in row_cells:
            if isinstance(r, str):  # no row for this column
                tds.append("<td></td>")
                continue
            text = escape(cell(r, "\n")).replace("\n", "<br>")
            if pd.notna(r.get("significant")) and bool(r.get("significant")) and pd.notna(r.get("delta")):
                loss = (r["delta"] < 0) != (r["metric"] in LOWER_IS_BETTER)
                label = "▼ significant loss" if loss else "▲ significant gain"
                tds.append(f"<td class='{'loss' if loss else 'gain'}'><b>{label}</b><br>{text}</td>")
            else:
                tds.append(f"<td>{text}</td>")
        lines.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table><tr>{head}</tr>" + "".join(lines) + "</table>"


def _delta_bars(bars, others: pd.DataFrame, tasks: list[str], runs: list[str], colour: dict[str, str],
                reference: str) -> None:
    """The top panel: per task, each run's delta to the reference with its interval; a method over training seeds
    adds each seed's delta as a dot."""
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


def _plot(comparison: Comparison) -> str:
    """As base64 PNG: across the top, the deltas to the reference with their intervals (for a method over training
    seeds, each seed's delta as a dot); below, gain against forgetting, each drift task's KL, and KL against
    forgetting and gain. One colour per run in every panel, named once in the top legend."""
    import matplotlib

    c, reference = comparison, comparison.reference
    table = c.rows[~c.rows["run"].isin(c.training_seed_runs)]
    capabilities = c.capabilities[~c.capabilities["run"].isin(c.training_seed_runs)]
    razor = c.drift[~c.drift["run"].isin(c.training_seed_runs)] if not c.drift.empty else c.drift
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = table[(table["run"] != reference) & ~table["metric"].isin(RAW_METRICS)]
    drift = table[(table["run"] != reference) & table["metric"].isin(RAW_METRICS)]
    tasks, runs = list(others["task"].unique()), list(others["run"].unique())
    colour = {run: f"C{i}" for i, run in enumerate(runs)} | {run: f"C{len(runs) + i}" for i, run in
                                                            enumerate(r for r in drift["run"].unique() if r not in runs)}
    below = 1 + drift["task"].nunique() + 2 * (not razor.empty)
    fig = plt.figure(figsize=(12.5, 8))
    grid = fig.add_gridspec(2, below, height_ratios=[1.2, 1])
    bars = fig.add_subplot(grid[0, :])
    scatter, *small = (fig.add_subplot(grid[1, i]) for i in range(below))
    _delta_bars(bars, others, tasks, runs, colour, reference)
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


def _markdown_html(text: str) -> str:
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
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in body) + "</table>")
            rows = []
        if line.startswith("- "):
            items.append(f"<li>{escape(line[2:])}</li>")
            continue
        if items:
            html.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.startswith(("<details>", "</details>")):  # our own folding, as GitHub renders it
            html.append(line)
        elif line:
            html.append(f"<h2>{escape(line[3:])}</h2>" if line.startswith("## ") else f"<p>{escape(line)}</p>")
    return "".join(html)


# The gate's verdict: markdown for a pull-request comment and the job summary, JUnit XML, JSON.

MARKDOWN_LIMIT = 65_536  # a pull-request comment; GitHub's step summary allows 1 MiB
FLIPS_SHOWN = 20


def gate_markdown(verdict: Verdict) -> str:
    """Verdict first, then one row per task; long flip lists are cut with a count, to fit a PR comment."""
    rows, config = verdict.rows, verdict.config
    failed, not_gated = rows[rows["verdict"] == "fail"], rows[rows["verdict"] == NOT_GATED]
    gated = len(rows) - len(not_gated)
    head = (f"## forgetbench gate: {'FAIL' if verdict.failed else 'PASS'}: {verdict.candidate} against "
            f"{verdict.baseline}\n\n" + (f"{len(failed)} of {gated} gated tasks regressed: {', '.join(failed['task'])}."
                                         if verdict.failed else f"No regression in {gated} gated tasks.")
            + (f" Not gated: {', '.join(not_gated['task'])} (a judge no better than the longer output decides "
               f"nothing)." if len(not_gated) else "")
            + f" Alpha {config.alpha:g} (Holm across the gated tasks); a task fails when its drop exceeds its allowed drop "
              f"and the paired test says it is real; detectable drop: the smallest drop these examples show with 80% "
              f"power at Holm's strictest step, alpha {config.alpha:g} / {gated}.\n")
    lines = [head, "| task | n | baseline | candidate | Δ [95% CI] | p (Holm) | allowed drop | detectable drop | "
                   "changed (down / up) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        k = scale(r.metric)
        gated = r.verdict != NOT_GATED
        power = f"{r.detectable_drop:.2f}" + (" (underpowered)" if r.underpowered else "") if gated else ""
        said = f"**FAIL**: {r.reasons}" if r.verdict == "fail" else "pass" if gated else f"{NOT_GATED}: {r.reasons}"
        lines.append(f"| {r.task} | {int(r.n)} | {k * r.baseline_score:.2f} | {k * r.score:.2f} | "
                     f"{k * r.delta:+.2f} [{k * r.delta_low:+.2f}, {k * r.delta_high:+.2f}] | {r.p_value:.3g}"
                     f"{f' ({r.p_holm:.3g})' if gated else ''} | {r.allowed_drop:g} | {power} | "
                     f"{int(r.right_to_wrong)} / {int(r.wrong_to_right)} | {said} |")
    lines += [""] + [f"- {note}" for note in verdict.notes]
    for task, ids in verdict.worse.items():
        shown = ", ".join(ids[:FLIPS_SHOWN]) + (f", and {len(ids) - FLIPS_SHOWN} more" if len(ids) > FLIPS_SHOWN else "")
        lines.append(f"- {task}: examples that got worse: {shown}")
    text = "\n".join(lines) + "\n"
    return text if len(text) < MARKDOWN_LIMIT else text[:MARKDOWN_LIMIT - 200] + "\n\n(cut to fit a comment)\n"


def gate_junit(verdict: Verdict) -> str:
    """One testcase per task; a regression is a <failure> carrying the delta and its interval."""
    cases = []
    for _, r in verdict.rows.iterrows():
        k = scale(r.metric)
        body = ""
        if r.verdict == "fail":
            message = (f"{r.task}: delta {k * r.delta:+.2f} [{k * r.delta_low:+.2f}, {k * r.delta_high:+.2f}], "
                       f"p_holm={r.p_holm:.3g}: {r.reasons}")
            body = f"<failure message={quoteattr(message)}>{escape(message)}</failure>"
        elif r.verdict == NOT_GATED:
            body = f"<skipped message={quoteattr(f'{NOT_GATED}: {r.reasons}')}/>"
        cases.append(f"<testcase classname=\"forgetbench.gate\" name={quoteattr(r.task)}>{body}</testcase>")
    failures = int((verdict.rows["verdict"] == "fail").sum())
    skipped = int((verdict.rows["verdict"] == NOT_GATED).sum())
    return (f"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuite name={quoteattr('forgetbench gate ' + verdict.candidate)}"
            f" tests=\"{len(cases)}\" failures=\"{failures}\" skipped=\"{skipped}\">\n" + "\n".join(cases) + "\n</testsuite>\n")


def gate_json(verdict: Verdict) -> dict[str, Any]:
    return {"verdict": "fail" if verdict.failed else "pass", "candidate": verdict.candidate,
            "baseline": verdict.baseline, "alpha": verdict.config.alpha, "notes": verdict.notes,
            "tasks": json.loads(verdict.rows.to_json(orient="records", double_precision=15))}


def agreement_markdown(readings: dict[str, dict[str, Any]], title: str) -> str:
    """`bench judge agreement`'s table: each reading of the judge and each baseline on the same pairs."""
    from bench.evaluation.agreement import PUBLISHED_HUMAN_AGREEMENT

    number = lambda v, f="{:.1f}": "-" if v is None else f.format(v)
    lines = [f"Judge agreement: {title}", "",
             "| judge or baseline | agreement % [95% CI] | minus the longer output [95% CI] | position consistency % | "
             "first shown wins % (clear-cut) | ρ with length difference | s per judgment |", "|---|---|---|---|---|---|---|"]
    for name, m in readings.items():
        if "agreement" not in m:
            lines.append(f"| {name} | | | | | {number(m.get('length_spearman'), '{:.2f}')} | |")
            continue
        first = m["first_position_clear_cut"]
        lines.append(f"| {name} | {100 * m['agreement']:.1f} [{100 * m['ci_low']:.1f}, {100 * m['ci_high']:.1f}] | "
                     f"{100 * m['minus_longer']:+.1f} [{100 * m['minus_longer_low']:+.1f}, "
                     f"{100 * m['minus_longer_high']:+.1f}] | {100 * m['position_consistency']:.1f} | "
                     f"{number(None if first is None else 100 * first)} | {number(m['length_spearman'], '{:.2f}')} | "
                     f"{number(m['seconds_per_judgment'], '{:.2f}')} |")
    lines += ["", "Agreement: with the reference judge's binary verdict on the pairs it decided (a judge's tie counts "
              "half, alpaca_eval's rule). For context, not the same measurement, alpaca_eval's published agreement "
              "with humans: " + ", ".join(f"{k} {v}%" for k, v in PUBLISHED_HUMAN_AGREEMENT.items()) + "."]
    return "\n".join(lines)
