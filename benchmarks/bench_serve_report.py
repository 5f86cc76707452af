"""Turn a bench_serve run's JSON lines into a markdown table (with the issue's targets) and a PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVE, NOBATCH = "rerank-serve", "rerank-serve (no cross-request batching)"
RATIO_TARGET, BATCHING_TARGET, TARGET_CLIENTS = 0.85, 3.0, 32


def _by(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["type"] == kind]


def offline_rates(records: list[dict[str, Any]]) -> dict[tuple[int, int], float]:
    return {(r["clients"], r["docs"]): r["pairs_per_s"] for r in _by(records, "offline")}


def load_table(records: list[dict[str, Any]]) -> list[str]:
    offline = offline_rates(records)
    lines = ["| server | clients | docs / request | requests | pairs/s | vs offline compute_score | latency p50 / p95 / "
             "p99 (ms) | lost | mismatched |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in _by(records, "load"):
        base = offline.get((r["clients"], r["docs"]))
        ratio = f"{r['pairs_per_s'] / base:.2f}" if base else ""
        lat = r["latency_s"]
        latency = f"{1e3 * lat['p50']:.0f} / {1e3 * lat['p95']:.0f} / {1e3 * lat['p99']:.0f}" if lat else ""
        lines.append(f"| {r['server']} | {r['clients']} | {r['docs']} | {r['requests']} | {r['pairs_per_s']:.1f} | "
                     f"{ratio} | {latency} | {r['lost']} | {r['mismatched']} |")
    return lines


def targets(records: list[dict[str, Any]]) -> list[str]:
    """The issue's three targets, each judged from this run's records (or said to be missing)."""
    offline = offline_rates(records)
    loads = {(r["server"], r["clients"], r["docs"]): r for r in _by(records, "load")}
    lines = []
    at_target = [(c, d) for (s, c, d) in loads if s == SERVE and c == TARGET_CLIENTS]
    for clients, docs in sorted(at_target):
        ratio = loads[(SERVE, clients, docs)]["pairs_per_s"] / offline[(clients, docs)]
        verdict = "met" if ratio >= RATIO_TARGET else "**missed**"
        lines.append(f"- server / offline throughput at {clients} clients, {docs} document(s) per request: "
                     f"{ratio:.2f} (target >= {RATIO_TARGET}): {verdict}")
    pairs = [(c, d) for (s, c, d) in loads if s == NOBATCH and (SERVE, c, d) in loads]
    for clients, docs in sorted(pairs):
        gain = loads[(SERVE, clients, docs)]["pairs_per_s"] / loads[(NOBATCH, clients, docs)]["pairs_per_s"]
        verdict = "met" if gain >= BATCHING_TARGET else "**missed**"
        note = "" if clients == TARGET_CLIENTS else f" (the target is judged at {TARGET_CLIENTS} clients)"
        lines.append(f"- cross-request batching on / off, {docs}-document requests at {clients} clients: {gain:.2f}x "
                     f"(target >= {BATCHING_TARGET}x){note}: {verdict}")
    lost = sum(r["lost"] for r in loads.values())
    wrong = sum(r["mismatched"] for r in loads.values())
    checked = sum(r["requests"] for r in loads.values())
    lines.append(f"- responses checked against offline scores: {checked}; lost {lost}, mismatched {wrong} "
                 f"(target 0 and 0): {'met' if lost == wrong == 0 else '**missed**'}")
    if not at_target:
        lines.append(f"- (no {TARGET_CLIENTS}-client scenario in this run: the throughput ratio target is not judged)")
    return lines


def problems(records: list[dict[str, Any]]) -> list[str]:
    lines = [f"- {r['server']}: {r['message']}" for r in _by(records, "server-failed")]
    lines += [f"- the run failed: {r['error']['type']}: {r['error']['message']}" for r in _by(records, "failed")]
    lines += [f"- {r['server']} exited with {r['exit_code']} after SIGTERM (rerank-serve drains, then exits 0)"
              for r in _by(records, "server-stopped") if r["exit_code"] not in (0, None)
              and r["server"].startswith(SERVE)]
    return lines or ["- none"]


def header(records: list[dict[str, Any]]) -> list[str]:
    env = _by(records, "environment")[0]
    s, v = env["settings"], env["versions"]
    done = _by(records, "done")
    return [f"Run {records[0]['run']} on {env['cpu']} ({env['physical_cores']} cores), commit {env['commit'][:10]}"
            f"{' (dirty)' if env['dirty'] else ''}; onnxruntime {v.get('onnxruntime', '?')}. Model {s['model']} "
            f"(fp32 export); {s['requests_per_client']} request(s) per client; server --max-batch-tokens "
            f"{s['max_batch_tokens']}, --max-batch-wait-ms {s['max_batch_wait_ms']}. Load average at start "
            f"{env['load_average'][0]:.1f}" + (f", run took {done[0]['seconds'] / 60:.1f} min." if done else "."),
            "The load generator runs on the same machine as the server (loopback), so it takes CPU from it too."]


def write_report(records: list[dict[str, Any]], stem: Path) -> tuple[Path, Path]:
    md = stem.with_name(stem.name + ".md")
    text = ["# rerank-serve load benchmark", "", *header(records), "", *load_table(records), "", "Targets:", "",
            *targets(records), "", "Failed or refused:", "", *problems(records), ""]
    md.write_text("\n".join(text))
    png = stem.with_name(stem.name + ".png")
    chart(records, png)
    return md, png


def chart(records: list[dict[str, Any]], path: Path) -> None:
    from rerank_runtime._deps import require

    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot")
    loads = _by(records, "load")
    offline = offline_rates(records)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    series = sorted({(r["server"], r["docs"]) for r in loads})
    for server, docs in series:
        rows = sorted((r for r in loads if r["server"] == server and r["docs"] == docs), key=lambda r: r["clients"])
        style = "o-" if len(rows) > 1 else "s"
        label = f"{server}, {docs} doc(s)"
        axes[0].plot([r["clients"] for r in rows], [r["pairs_per_s"] for r in rows], style, label=label)
        axes[1].plot([r["clients"] for r in rows], [1e3 * r["latency_s"]["p95"] for r in rows if r["latency_s"]],
                     style, label=label)
    for docs in sorted({d for _, d in offline}):
        best = max(v for (c, d), v in offline.items() if d == docs)
        axes[0].axhline(best, color="grey", linestyle=":", linewidth=0.8)
        axes[0].annotate(f"offline, {docs} doc(s)", (1, best), fontsize=7, color="dimgrey", va="bottom")
    clients = sorted({r["clients"] for r in loads})
    for ax, title, unit in ((axes[0], "Throughput", "pairs/s"), (axes[1], "Latency p95", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    env = _by(records, "environment")[0]
    fig.suptitle(f"rerank-serve, {env['settings']['model']} on {env['cpu']}, {env['time_utc'][:10]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
