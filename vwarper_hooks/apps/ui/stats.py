"""Results of the preference study: how often run A was preferred per question, with Wilson intervals.

A rate of k wins in n paired choices gets the Wilson score interval (better than the normal
approximation at small n and near 0 or 1, never outside [0, 1]); the plot shows each question's rate
for run A with its 95% interval and the 50% line of no preference, as the paper's fig. 7 does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .study import QUESTIONS

#: the two-sided 95% normal quantile
Z95 = 1.959963984540054


def wilson(wins: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `wins` / `n` (n = 0: the whole range, (0, 1))."""
    if n < 0 or not 0 <= wins <= n:
        raise ValueError(f"Expected 0 <= wins <= n, but got wins={wins}, n={n}.")
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Preference:
    """One question's result: run A was preferred in `wins_a` of `n` answers."""

    key: str
    name: str
    n: int
    wins_a: int
    low: float
    high: float

    @property
    def rate_a(self) -> float:
        return self.wins_a / self.n if self.n else float("nan")


def preferences(rows: list[dict[str, str]]) -> list[Preference]:
    """Per question (the paper's four, in order): answers, wins of run A, and the 95% Wilson interval."""
    out = []
    for key, name, _ in QUESTIONS:
        votes = [row[key] for row in rows if row.get(key) in ("A", "B")]
        wins = votes.count("A")
        out.append(Preference(key, name, len(votes), wins, *wilson(wins, len(votes))))
    return out


def table(prefs: list[Preference]) -> list[list[Any]]:
    """Rows for a results table: question, answers, run A preferred (%), 95% interval (%)."""
    return [[p.name, p.n, "-" if not p.n else f"{100 * p.rate_a:.1f}",
             f"{100 * p.low:.1f} - {100 * p.high:.1f}"] for p in prefs]


def results_figure(prefs: list[Preference], name_a: str, name_b: str, raters: int) -> Any:
    """A matplotlib figure: run A's preference rate per question with its 95% Wilson interval."""
    from matplotlib.figure import Figure  # no pyplot: no global state shared by the server's threads

    fig = Figure(figsize=(6.4, 2.6), dpi=100)
    ax = fig.subplots()
    names = [p.name for p in prefs][::-1]
    rates = [0.0 if not p.n else p.rate_a for p in prefs][::-1]
    lows = [r - p.low for r, p in zip(rates, prefs[::-1], strict=True)]
    highs = [p.high - r for r, p in zip(rates, prefs[::-1], strict=True)]
    ax.barh(names, rates, color="#4c72b0", xerr=[lows, highs], capsize=4, ecolor="#333333")
    ax.axvline(0.5, color="#c44e52", linestyle="--", linewidth=1, label="no preference")
    for y, (rate, p) in enumerate(zip(rates, prefs[::-1], strict=True)):
        inside = rate > 0.2  # white on the bar, or dark beside a short one
        ax.text(0.01 if inside else rate + 0.01, y, f"{100 * rate:.0f}% of {p.n}", va="center", fontsize=8,
                color="white" if inside else "#222222")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of answers preferring A ({name_a}) over B ({name_b}); bars: 95% Wilson interval")
    total = max((p.n for p in prefs), default=0)
    ax.set_title(f"Preference for run A: {total} pairs rated by {raters} rater(s)", fontsize=10)
    ax.xaxis.label.set_fontsize(8)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
