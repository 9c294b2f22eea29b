"""`gptjax compare` (python -m gptjax.bench compare): the records' table and, with --out, a chart.

    gptjax compare benchmarks/results/*.jsonl --out /tmp/compare.png

The chart: records grouped by device and model, training and decoding in panels of their own.

Repeated runs of one setting on one day are one bar (their median, whiskers from the slowest to the
fastest), so the image stays a readable size however many records the files hold.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from gptjax.bench.records import accelerator, format_table, framework_of, load_records
from gptjax.errors import DataError

# Bars a chart draws at most: past this the oldest groups are left out (the chart says how many),
# so its height stays bounded.
MAX_BARS = 40
# A panel spanning more than this factor gets a log axis: a linear one flattens the slower bars.
LOG_RANGE = 10.0
WIDTH_IN, DPI = 12.0, 110
BAR_IN, PANEL_IN, MIN_HEIGHT_IN = 0.3, 1.1, 3.0
FRAMEWORK_COLOURS = {"gptjax": "tab:blue", "pytorch-eager": "tab:orange", "pytorch-compile": "tab:green",
                     "gptjax (plan: estimate)": "lightsteelblue"}

PANELS = {
    "train": "train tokens / s (median pipelined step)",
    "decode": "generated tokens / s (whole generate call, prefill included)",
}


@dataclass
class Group:
    panel: str      # train or decode
    section: str    # model and device: the groups a heading gathers
    label: str      # what tells this bar from its neighbours: framework, shape, version, date
    framework: str
    values: list
    mfus: list
    day: str
    order: tuple = ()  # numbers sort as numbers: batch 4 before batch 16

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def mfu(self):
        return statistics.median(self.mfus) if self.mfus else None


def panel_of(r: dict) -> str:
    return "decode" if r.get("benchmark") == "generate" else "train"


def version_of(r: dict) -> str:
    versions = r.get("versions") or {}
    if r.get("framework", "gptjax").startswith("pytorch"):
        return f"torch {versions['torch']}" if versions.get("torch") else ""
    return f"jax {versions['jax']}" if versions.get("jax") else ""


def _day(r: dict) -> str:
    return (r.get("timestamp") or "")[:10]


def _number(x) -> float:
    return x if isinstance(x, (int, float)) else -1


def group_records(records: list[dict]) -> list[Group]:
    """Records of one setting, software version and day together; sorted by panel, section, then bar."""
    groups: dict[tuple, Group] = {}
    for r in records:
        if r.get("tokens_per_sec") is None:  # a plan with no estimate
            continue
        panel, framework = panel_of(r), framework_of(r)
        section = f"{r.get('model', r.get('config', '?'))}  on  {accelerator(r)}"
        shape = f"batch {r.get('batch_size')} x {r.get('seq_len')}"
        if panel == "decode" and r.get("prompt_length") is not None:
            shape = f"batch {r.get('batch_size')}, {r['prompt_length']}+{r.get('max_new_tokens')} tokens"
        parts = [framework, r.get("config", ""), shape, r.get("dtype", ""), version_of(r), _day(r)]
        key = (panel, section, *parts)
        group = groups.get(key)
        if group is None:
            label = "  ".join(p for p in parts if p)
            order = (framework, r.get("config", ""), _number(r.get("batch_size")), _number(r.get("seq_len")),
                     _number(r.get("prompt_length")), *parts[3:])
            group = groups[key] = Group(panel, section, label, framework, [], [], _day(r), order)
        group.values.append(float(r["tokens_per_sec"]))
        if r.get("mfu") is not None:
            group.mfus.append(float(r["mfu"]))
    out = list(groups.values())
    for g in out:
        if len(g.values) > 1:
            g.label += f"  (n={len(g.values)})"
    return sorted(out, key=lambda g: (list(PANELS).index(g.panel), g.section, g.order))


def cap(groups: list[Group], limit: int = MAX_BARS) -> tuple[list[Group], int]:
    """At most `limit` groups, the most recent kept (in their order); and how many were left out."""
    if len(groups) <= limit:
        return groups, 0
    keep = set(map(id, sorted(groups, key=lambda g: g.day, reverse=True)[:limit]))
    return [g for g in groups if id(g) in keep], len(groups) - limit


def log_axis(values) -> bool:
    values = [v for v in values if v > 0]
    return bool(values) and max(values) > LOG_RANGE * min(values)


def rows(groups: list[Group]) -> list:
    """A panel's rows from the top: a section heading (a str) before its first group, then its groups."""
    out, section = [], None
    for g in groups:
        if g.section != section:
            out.append(section := g.section)
        out.append(g)
    return out


def figure_size(panel_rows: list[int]) -> tuple[float, float]:
    """Inches: a fixed width; a height from the rows, which cap() bounds."""
    return WIDTH_IN, max(MIN_HEIGHT_IN, sum(PANEL_IN + BAR_IN * n for n in panel_rows))


def plot(records: list[dict], path) -> None:
    """Horizontal bars of tokens/s, a panel each for training and decoding."""
    try:
        import matplotlib
    except ImportError:  # an extra: nothing else in gptjax needs it
        raise ImportError("the chart needs matplotlib: pip install 'gptjax[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    groups, left_out = cap(group_records(records))
    panels = [(p, rows([g for g in groups if g.panel == p])) for p in PANELS]
    panels = [(p, r) for p, r in panels if r]
    fig, axes = plt.subplots(len(panels), 1, figsize=figure_size([len(r) for _, r in panels]), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": [len(r) + 2 for _, r in panels]})
    for ax, (panel, panel_rows) in zip(axes[:, 0], panels):
        _draw_panel(ax, panel, panel_rows)
    note = "a bar: the median of a setting's runs on a day (n= runs); whiskers: the slowest and fastest"
    if left_out:
        note += f"; the {left_out} oldest bars left out"
    fig.suptitle(f"gptjax benchmark records\n{note}", x=0.01, ha="left", fontsize=10)
    used = {g.framework for g in groups}
    handles = [Patch(color=c, label=f) for f, c in FRAMEWORK_COLOURS.items() if f in used]
    fig.legend(handles=handles, fontsize=8, loc="upper right", ncol=len(handles))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _draw_panel(ax, panel: str, panel_rows: list) -> None:
    bars = [(i, g) for i, g in enumerate(panel_rows) if isinstance(g, Group)]
    lows = [min(g.values) for _, g in bars]
    highs = [max(g.values) for _, g in bars]
    log = log_axis(lows + highs)
    if log:
        from matplotlib import ticker

        ax.set_xscale("log")
        # 1, 2, 5 in each decade where there are few; past four decades, the decades alone.
        decades = math.log10(max(highs) / max(min(lows), 1e-9))
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5) if decades <= 4 else (1,)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ys = [i for i, _ in bars]
    medians = [g.median for _, g in bars]
    ax.barh(ys, medians, color=[FRAMEWORK_COLOURS.get(g.framework, "tab:gray") for _, g in bars], height=0.7)
    spread = [(m - lo, hi - m) for m, lo, hi in zip(medians, lows, highs)]
    ax.errorbar(medians, ys, xerr=list(zip(*spread)), fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
    for (i, g), hi in zip(bars, highs):
        text = f"{g.median:,.0f}" + ("" if g.mfu is None else f"  MFU {100 * g.mfu:.1f}%")
        ax.annotate(text, (hi, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(range(len(panel_rows)), [r if isinstance(r, str) else r.label for r in panel_rows], fontsize=7)
    for tick, r in zip(ax.get_yticklabels(), panel_rows):
        if isinstance(r, str):
            tick.set_fontweight("bold")
    ax.set_ylim(len(panel_rows) - 0.5, -0.5)  # the first row on top
    lo, hi = min(lows), max(highs)
    span = hi / lo if log else 1.0
    # Room on the right for the value texts, which take a fixed share of the width on any scale.
    ax.set_xlim(lo / span ** 0.2 if log else 0, hi * span ** 0.3 if log else hi * 1.3)
    ax.set_xlabel(PANELS[panel] + (", log scale" if log else ""), fontsize=9)
    ax.grid(axis="x", which="both" if log else "major", alpha=0.3)
    ax.set_axisbelow(True)


def add_compare_arguments(parser) -> None:
    parser.add_argument("records", nargs="+", help="benchmark.json or results .jsonl files")
    parser.add_argument("--out", help="also draw the chart into this PNG file (without it: the table alone, "
                                      "nothing written)")


def compare(args) -> None:
    """`gptjax compare` (`python -m gptjax.bench compare`): prints the table, then draws the chart if --out."""
    try:
        records = load_records(args.records)
    except DataError as e:
        sys.exit(f"error: {e}")
    if not records:
        sys.exit("error: no records in " + ", ".join(args.records))
    print(format_table(records))
    if not args.out:
        return
    try:
        plot(records, args.out)
    except ImportError as e:
        sys.exit(f"error: {e}")
    print(f"chart: {args.out}")
