"""Rich rendering of summaries shared by several commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_summary(s: dict[str, Any], *, features: bool = True) -> None:
    prev = f"{100 * s['prevalence']:.1f} %" if s["prevalence"] is not None else "n/a"
    console.print(f"[bold]{s['stays']}[/] stays from [bold]{s['source']}[/], {s['positives']} with "
                  f"{s['label']} = 1 ({prev}); {s['n_temporal']} temporal and {s['n_static']} static features "
                  f"over {s['hours']:g} h in {s['bin_hours']:g} h bins")
    t = Table(title=f"sites (by {s['site_by'] or 'n/a'})")
    for col in ("site", "stays", "positives", "prevalence"):
        t.add_column(col, justify="right" if col != "site" else "left")
    for r in s["sites"]:
        p = f"{100 * r['prevalence']:.1f} %" if r["prevalence"] is not None else "n/a"
        t.add_row(r["site"], str(r["stays"]), str(r["positives"]), p)
    console.print(t)
    if features:
        t = Table(title="temporal features")
        for col in ("feature", "unit", "stays w/o value", "empty bins", "meas./stay", "dropped (range)"):
            t.add_column(col, justify="left" if col in ("feature", "unit") else "right")
        drops = s.get("dropped_out_of_range", {})
        for r in s["features"]:
            t.add_row(r["feature"], r["unit"], f"{100 * r['stays_without_any_value']:.1f} %",
                      f"{100 * r['empty_bins']:.1f} %", f"{r['measurements_per_stay']:.1f}",
                      str(drops.get(r["feature"], 0)))
        console.print(t)
    static_drops = s.get("static_dropped_out_of_range") or {}
    console.print(f"out-of-range values dropped: {s.get('dropped_out_of_range_total', 0)} temporal"
                  + (f", static: {static_drops}" if static_drops else ""))


def parse_options(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to loader options (ints and floats converted, the rest kept as text)."""
    from fedehr.errors import InputError

    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError("malformed --option", field="--option", value=item, expected="KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out
