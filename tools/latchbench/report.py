#!/usr/bin/python3
"""latchbench report: turns latchbench documents (schema latchbench/1) into a
self-contained HTML page and the same figures as PNG and SVG files.

    report.py OUT_DIR A.json            one run
    report.py OUT_DIR A.json B.json     two runs side by side (B against A)

Run through `latchbench report`, which finds this file and Debian's python3
(where python3-matplotlib lives). docs/latchbench.md describes the page.
Exit codes: 0 written, 1 could not write, 2 bad input (the message names the
file and what is wrong).
"""

import base64
import html
import io
import json
import math
import os
import sys

SCHEMA = "latchbench/1"
# The scenarios issue 18 asks for, in the order the page shows them; a
# document that lacks one says so instead of leaving a silent gap.
SCENARIOS = ["uncontended", "contended", "handoff", "cost", "scale", "failover"]


class BadInput(Exception):
    pass


def load(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 (byte {e.start})")
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
        where = f" (line {e.lineno} column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise BadInput(f"{path}: not JSON: {msg}{where}")
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a latchbench document (a JSON object is expected)")
    if doc.get("schema") != SCHEMA:
        raise BadInput(f"{path}: schema {doc.get('schema')!r} is not {SCHEMA!r}")
    for key, kind in (("environment", dict), ("parameters", dict), ("results", list)):
        if not isinstance(doc.get(key), kind):
            raise BadInput(f"{path}: '{key}' is missing or not a JSON {kind.__name__}")
    for i, r in enumerate(doc["results"]):
        where = f"{path}: results[{i}]"
        if not isinstance(r, dict):
            raise BadInput(f"{where} is not an object")
        for key in ("scenario", "backend", "path", "mode", "metric"):
            if not isinstance(r.get(key), str):
                raise BadInput(f"{where}: '{key}' is missing or not a string")
        s = r.get("summary")
        if not isinstance(s, dict) or not all(
                isinstance(s.get(k), (int, float)) for k in ("n", "median", "p90", "p99", "max")):
            raise BadInput(f"{where}: 'summary' lacks n, median, p90, p99 or max")
        for j, run in enumerate(r.get("runs", [])):
            samples = run.get("samples", []) if isinstance(run, dict) else None
            if not isinstance(samples, list) or not all(
                    isinstance(x, (int, float)) and math.isfinite(x) for x in samples):
                raise BadInput(f"{where}.runs[{j}]: 'samples' must be a list of finite numbers")
    doc["_path"] = path
    return doc


def key(r):
    return (r["scenario"], r["backend"], r.get("placement", ""), r["path"], r["mode"], r["metric"])


def where(r):
    """Where a result was measured, short: "" on this host, else the node
    and what matters (the DLM master, NFS, the LUN)."""
    p = r.get("placement", "")
    if not p or p.startswith("host"):
        return p.split("; ", 1)[1] if "; " in p else ""  # contended: owners and leases
    return p.replace("lease area on the shared LUN", "LUN").replace("lock files on NFS", "NFS")


def label_of(r):
    w = where(r)
    return f"{r['backend']}{' [' + w + ']' if w else ''} {r['mode']}"


def scale_of(metric):
    """(factor, unit) for showing a metric."""
    if metric.endswith("_seconds"):
        return 1e6, "µs"
    if metric.endswith("_s"):  # failover: seconds
        return 1.0, "s"
    return 1.0, ""


def fmt(v, metric):
    f, _ = scale_of(metric)
    v = v * f
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def samples_of(r):
    out = []
    for run in r.get("runs", []):
        out.extend(run.get("samples", []))
    return out


def esc(x):
    return html.escape(str(x))


class Figures:
    """Writes each figure as PNG and SVG into out_dir/figures and keeps the
    PNG bytes for embedding."""

    def __init__(self, out_dir):
        self.dir = os.path.join(out_dir, "figures")
        os.makedirs(self.dir, exist_ok=True)
        self.made = []  # (name, title, png bytes)

    def save(self, fig, name, title):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        png = buf.getvalue()
        with open(os.path.join(self.dir, name + ".png"), "wb") as f:
            f.write(png)
        fig.savefig(os.path.join(self.dir, name + ".svg"), format="svg", bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)
        self.made.append((name, title, png))
        return name


def cdf_figures(figs, docs, scenario):
    """One latency CDF per path of a scenario: one line per backend and mode
    (B's lines dashed when two runs are shown)."""
    import matplotlib.pyplot as plt
    import numpy as np
    made = []
    paths = sorted({r["path"] for d in docs for r in d["results"]
                    if r["scenario"] == scenario and r["metric"].endswith("_seconds")})
    for path in paths:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        lines = 0
        for di, d in enumerate(docs):
            for r in d["results"]:
                if r["scenario"] != scenario or r["path"] != path:
                    continue
                xs = np.sort(np.asarray(samples_of(r), dtype=float)) * 1e6
                if xs.size == 0:
                    continue
                ys = np.arange(1, xs.size + 1) / xs.size
                label = label_of(r)
                if len(docs) > 1:
                    label = f"{'AB'[di]}: {label}"
                if not trusted(r):
                    label += " (noisy)"
                ax.step(xs, ys, where="post", label=label, linestyle="-" if di == 0 else "--")
                lines += 1
        if lines == 0:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_xlabel("release to the other node's grant (µs, log scale)" if scenario == "handoff"
                      else "one cycle (µs, log scale)")
        ax.set_ylabel("fraction of samples ≤ x")
        ax.set_ylim(0, 1.01)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(f"{scenario}: latency CDF, {path}")
        ax.legend(fontsize=8, loc="lower right")
        made.append(figs.save(fig, f"cdf-{scenario}-{path}", f"{scenario}: latency CDF ({path})"))
    return made


def medians_figure(figs, docs, scenario):
    """Median per block (bar) with a line to p99, raw, in process and latchd
    next to each other per backend and mode, so the agent's share shows;
    noisy blocks hatched. Horizontal: there can be dozens of blocks."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    rows = []
    for di, d in enumerate(docs):
        for r in d["results"]:
            if r["scenario"] == scenario and r["metric"].endswith("_seconds"):
                rows.append((di, r))
    if not rows:
        return []
    order = {"raw": 0, "in-process": 1, "latchd": 2}
    rows.sort(key=lambda x: (x[1]["backend"], x[1].get("placement", ""), x[1]["mode"],
                             order.get(x[1]["path"], 3), x[0]))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * len(rows)))
    colors = {"raw": "#55a868", "in-process": "#4c72b0", "latchd": "#dd8452"}
    for i, (di, r) in enumerate(rows):
        s = r["summary"]
        med, p99 = s["median"] * 1e6, s["p99"] * 1e6
        ok = trusted(r)
        ax.barh(i, med, color=colors.get(r["path"], "#8172b3"), alpha=1.0 if di == 0 else 0.55,
                hatch=None if ok else "//", edgecolor="black", linewidth=0.5)
        ax.plot([med, p99], [i, i], color="black", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([("AB"[di] + ": " if len(docs) > 1 else "") + f"{label_of(r)}, {r['path']}"
                        for di, r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median (bar) and p99 (line), µs, log scale")
    ax.set_title(f"{scenario}: median per backend, mode and path")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    handles = [Patch(facecolor=c, edgecolor="black", label=p) for p, c in colors.items()
               if any(r["path"] == p for _, r in rows)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="too noisy"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return [figs.save(fig, f"medians-{scenario}", f"{scenario}: medians and p99")]


def runs_figure(figs, docs, scenario):
    """Each run's median per block: shows drift and noise between runs."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    n = 0
    for di, d in enumerate(docs):
        for r in d["results"]:
            if r["scenario"] != scenario or not r["metric"].endswith("_seconds"):
                continue
            meds = [run["summary"]["median"] * 1e6 for run in r.get("runs", [])
                    if isinstance(run.get("summary"), dict) and "median" in run["summary"]]
            if not meds:
                continue
            label = ("AB"[di] + ": " if len(docs) > 1 else "") + f"{label_of(r)} {r['path']}"
            ax.plot(range(1, len(meds) + 1), meds, marker="o",
                    linestyle="-" if di == 0 else "--", label=label)
            n += 1
    if n == 0:
        plt.close(fig)
        return []
    ax.set_yscale("log")
    ax.set_xlabel("run")
    ax.set_ylabel("median of the run, µs")
    ax.set_title(f"{scenario}: each run's median (flat lines: a steady machine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return [figs.save(fig, f"runs-{scenario}", f"{scenario}: medians run by run")]


def clock_rows(where, kind):
    """The clocks measured at a run's start and end (the lab's nodes, or the
    hosts), against the first: one row each."""
    rows = []
    for k, when in (("clocks", "start"), ("clocks_after", "end")):
        c = where.get(k)
        if isinstance(c, dict) and isinstance(c.get(kind + "s"), list):
            rows.append((f"{kind} clocks at the {when} (against {kind}1)", "; ".join(
                f"{kind}{n.get(kind)} {n.get('offset_ns', 0) / 1e6:+.3f} ms "
                f"± {n.get('uncertainty_ns', 0) / 1e6:.3f}" for n in c[kind + "s"])))
        elif isinstance(c, dict) and "error" in c:
            rows.append((f"{kind} clocks at the {when}", f"not measured: {c['error']}"))
    return rows


def env_rows(doc):
    e, p = doc["environment"], doc["parameters"]
    load = e.get("load") or []
    load_end = e.get("load_end") or []
    cpus = e.get("cpus_online")
    rows = [
        ("file", doc["_path"]),
        ("started / finished", f"{doc.get('started', '?')} / {doc.get('finished', '?')}"),
        ("host", f"{e.get('hostname', '?')}: {e.get('cpu_model', '?')}, {cpus} CPUs, "
                 f"{round(e.get('mem_total_kb', 0) / 1048576, 1)} GiB"),
        ("kernel", f"{e.get('kernel', '?')} {e.get('kernel_build', '')}"),
        ("load (1, 5, 15 min)", f"start {load}, end {load_end}"),
        ("packages", ", ".join(f"{k} {v}" for k, v in sorted((e.get("packages") or {}).items()))),
        ("command", " ".join(doc.get("command", []))),
        ("parameters", ", ".join(f"{k}={v}" for k, v in sorted(p.items())
                                 if k not in ("plugin_path", "latchd"))),
    ]
    lab = doc.get("lab")
    if isinstance(lab, dict) and lab:
        rows.append(("lab", ", ".join(f"{k}={v}" for k, v in sorted(lab.items())
                                      if k not in ("latchd_backends", "clocks", "clocks_after"))))
        rows += clock_rows(lab, "node")
    hosts = doc.get("hosts")
    if isinstance(hosts, dict) and isinstance(hosts.get("hosts"), list):
        rows.append(("hosts", f"reached with '{hosts.get('rsh', '?')}': " + "; ".join(
            f"host{i + 1} {h.get('host', '?')} ({h.get('hostname', '?')}, kernel "
            f"{h.get('kernel', '?')}, {h.get('cpus', '?')} CPUs), latchd at {h.get('socket', '?')} "
            f"with {', '.join(str(b) for b in (h.get('hello') or {}).get('backends', []))}"
            for i, h in enumerate(hosts["hosts"]) if isinstance(h, dict))))
        rows += clock_rows(hosts, "host")
    return rows


def load_warning(doc):
    e = doc["environment"]
    cpus = e.get("cpus_online") or 0
    worst = max((e.get("load") or [0])[:1] + (e.get("load_end") or [0])[:1])
    if cpus and worst > cpus * 0.5:
        return (f"The machine was busy: a 1-minute load of {worst} on {cpus} CPUs. "
                "Figures from this run carry that load; compare them only with a run under "
                "the same load.")
    return ""


def differences(a, b):
    """What differs between two runs' environments and parameters, except
    what always differs (times, load, paths)."""
    out = []
    skip = {"load", "load_end", "hostname"}
    for section in ("environment", "parameters"):
        ka, kb = a[section], b[section]
        for k in sorted(set(ka) | set(kb)):
            if k in skip or k in ("plugin_path", "latchd"):
                continue
            if ka.get(k) != kb.get(k):
                out.append(f"{section}.{k}: A {ka.get(k)!r}, B {kb.get(k)!r}")
    return out


def summary_table(doc, label=""):
    h = ["<table><tr><th>scenario</th><th>backend</th><th>where</th><th>path</th><th>mode</th>"
         "<th>n</th><th>median</th><th>p90</th><th>p99</th><th>max</th><th>verdict</th></tr>"]
    for r in doc["results"]:
        s, m = r["summary"], r["metric"]
        unit = scale_of(m)[1]
        v = r.get("verdict", {})
        ok = trusted(r)
        cls = "" if ok else " class='noisy'"
        h.append(
            f"<tr{cls}><td>{esc(r['scenario'])}</td><td>{esc(r['backend'])}</td>"
            f"<td>{esc(r.get('placement', ''))}</td><td>{esc(r['path'])}</td><td>{esc(r['mode'])}</td><td>{s['n']}</td>"
            + "".join(f"<td>{fmt(s[k], m)} {unit}</td>" for k in ("median", "p90", "p99", "max"))
            + f"<td>{'trusted' if ok else 'TOO NOISY'}: {esc(v.get('why', ''))}</td></tr>")
    h.append("</table>")
    return "\n".join(h)


def trusted(r):
    """Whether the result's runs agree well enough to compare (verdict)."""
    return r.get("verdict", {}).get("trusted", True)


def timed_blocks(doc):
    """The timed results by (scenario, backend, placement, mode, path)."""
    return {(r["scenario"], r["backend"], r.get("placement", ""), r["mode"], r["path"]): r
            for r in doc["results"] if r["metric"].endswith("_seconds")}


def agent_share_table(doc):
    """latchd's median minus the in-process median, per backend and mode."""
    by = timed_blocks(doc)
    rows = []
    for (sc, be, pl, mode, path), r in sorted(by.items()):
        if path != "latchd" or (sc, be, pl, mode, "in-process") not in by:
            continue
        ip = by[(sc, be, pl, mode, "in-process")]
        d = r["summary"]["median"] - ip["summary"]["median"]
        both = trusted(r) and trusted(ip)
        mark = "" if both else " class='noisy'"
        rows.append(f"<tr{mark}><td>{esc(sc)}</td><td>{esc(be)}</td><td>{esc(pl)}</td>"
                    f"<td>{esc(mode)}</td><td>{fmt(ip['summary']['median'], 's_seconds')} µs</td>"
                    f"<td>{fmt(r['summary']['median'], 's_seconds')} µs</td>"
                    f"<td>{fmt(d, 's_seconds')} µs</td>"
                    f"<td>{'' if both else 'one of the two is too noisy to compare'}</td></tr>")
    if not rows:
        return ""
    return ("<h3>latchd's share</h3><p>The median through latchd minus the median in process, "
            "per backend and mode: what the agent (socket, journal, bookkeeping) adds.</p>"
            "<table><tr><th>scenario</th><th>backend</th><th>where</th><th>mode</th><th>in process</th>"
            "<th>through latchd</th><th>latchd adds</th><th></th></tr>" + "".join(rows) + "</table>")


def raw_ratio_table(doc):
    """The framework against the raw API in the same run: median over the raw
    median, per backend that has a raw cycle, for the raw cycle's mode."""
    by = timed_blocks(doc)
    rows = []
    for (sc, be, pl, mode, path), raw in sorted(by.items()):
        if path != "raw":
            continue
        for other in ("in-process", "latchd"):
            r = by.get((sc, be, pl, mode, other))
            if r is None or raw["summary"]["median"] <= 0:
                continue
            ratio = r["summary"]["median"] / raw["summary"]["median"]
            both = trusted(r) and trusted(raw)
            mark = "" if both else " class='noisy'"
            rows.append(f"<tr{mark}><td>{esc(sc)}</td><td>{esc(be)}</td><td>{esc(pl)}</td>"
                        f"<td>{esc(mode)}</td><td>{esc(other)}</td><td>{fmt(raw['summary']['median'], 's_seconds')} µs"
                        f"</td><td>{fmt(r['summary']['median'], 's_seconds')} µs</td>"
                        f"<td>{ratio:.2f}</td>"
                        f"<td>{'' if both else 'one of the two is too noisy to compare'}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Against the raw API</h3><p>The backend's median over the median of the same "
            "work done with the raw API in the same run (the raw cycle is described under the "
            "scenario).</p><table><tr><th>scenario</th><th>backend</th><th>where</th><th>mode</th>"
            "<th>path</th>"
            "<th>raw</th><th>latchkey</th><th>ratio</th><th></th></tr>" + "".join(rows)
            + "</table>")


def cost_totals(c):
    """One block's cost per cycle, summed: disk I/Os and bytes, packets and
    bytes on the network, the machine's busy CPU and each daemon's (ms)."""
    disk = c.get("disk", {}).values()
    net = c.get("net", {}).values()
    return {
        "ios": sum(d.get("reads", 0) + d.get("writes", 0) for d in disk),
        "io_bytes": sum(d.get("read_bytes", 0) + d.get("write_bytes", 0) for d in disk),
        "packets": sum(n.get("rx_packets", 0) + n.get("tx_packets", 0) for n in net),
        "net_bytes": sum(n.get("rx_bytes", 0) + n.get("tx_bytes", 0) for n in net),
        "busy_ms": c.get("machine_busy_seconds", 0) * 1e3,
        "cpu_ms": {k: v * 1e3 for k, v in c.get("cpu_seconds", {}).items()},
    }


def cost_table(doc):
    """Cost per cycle of every block that reported one (lab nodes)."""
    rows = []
    for r in doc["results"]:
        c = r.get("cost_per_cycle")
        if not c:
            continue
        t = cost_totals(c)
        bg = cost_totals(c["background"]) if isinstance(c.get("background"), dict) else None

        def idle(k):
            return f" (idle {bg[k]:.2f})" if bg else ""
        daemons = ", ".join(f"{esc(k)} {v:.3f}" for k, v in sorted(t["cpu_ms"].items())
                            if v > 0 and k != "self")
        devs = ", ".join(esc(k) for k in sorted(c.get("disk", {})))
        ifs = ", ".join(esc(k) for k in sorted(c.get("net", {})))
        rows.append(
            f"<tr><td>{esc(r['scenario'])}</td><td>{esc(r['backend'])}</td>"
            f"<td>{esc(r.get('placement', ''))}</td><td>{esc(r['path'])}</td><td>{esc(r['mode'])}</td>"
            f"<td>{int(c.get('cycles', 0))}</td><td>{t['ios']:.2f}{idle('ios')}</td>"
            f"<td>{t['io_bytes'] / 1024:.1f}"
            f"{' (' + devs + ')' if devs else ''}</td><td>{t['packets']:.2f}{idle('packets')}</td>"
            f"<td>{t['net_bytes'] / 1024:.2f}{' (' + ifs + ')' if ifs else ''}</td>"
            f"<td>{t['busy_ms']:.3f}{idle('busy_ms')}</td><td>{t['cpu_ms'].get('self', 0):.3f}</td>"
            f"<td>{daemons}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Cost per cycle</h3><p>What one timed cycle cost the node it ran on: block-layer "
            "I/O requests and KiB (/proc/diskstats), packets and KiB on its network interfaces "
            "(/proc/net/dev; the cluster and storage wires), the node's busy CPU (/proc/stat: "
            "kernel work such as the DLM's included), the measuring process's CPU and each lock "
            "daemon's (/proc/PID/stat), in ms. Counters are read before and after the timed "
            "cycles, so everything else the node did meanwhile is in them too; CPU is counted in "
            "clock ticks (10 ms in a lab node), so a figure below 10 ms / cycles is at the "
            "resolution's edge. <i>(idle N)</i>: the background, the same counters over an idle "
            "interval as long as the block (0.2 to 1 s) right after it, per cycle: what the "
            "node did anyway (corosync's heartbeats, sanlock's renewals).</p><table><tr><th>scenario</th><th>backend</th><th>where</th>"
            "<th>path</th><th>mode</th><th>cycles</th><th>disk I/Os</th><th>disk KiB</th>"
            "<th>packets</th><th>net KiB</th><th>node CPU ms</th><th>own CPU ms</th>"
            "<th>daemons' CPU ms</th></tr>" + "".join(rows) + "</table>")


def cost_figure(figs, docs, scenario):
    """Disk I/Os, packets and node CPU per cycle, one bar per block that
    reported its cost."""
    import matplotlib.pyplot as plt
    rows = [(di, r) for di, d in enumerate(docs) for r in d["results"]
            if r["scenario"] == scenario and r.get("cost_per_cycle")]
    if not rows:
        return []
    order = {"raw": 0, "in-process": 1, "latchd": 2}
    rows.sort(key=lambda x: (x[1]["backend"], x[1].get("placement", ""), x[1]["mode"],
                             order.get(x[1]["path"], 3), x[0]))
    fig, axes = plt.subplots(1, 3, figsize=(12, 1.2 + 0.28 * len(rows)), sharey=True)
    colors = {"raw": "#55a868", "in-process": "#4c72b0", "latchd": "#dd8452"}
    for ax, (k, label) in zip(axes, [("ios", "disk I/O requests"), ("packets", "network packets"),
                                     ("busy_ms", "node CPU, ms")]):
        for i, (di, r) in enumerate(rows):
            v = cost_totals(r["cost_per_cycle"])[k]
            ax.barh(i, v, color=colors.get(r["path"], "#8172b3"),
                    alpha=1.0 if di == 0 else 0.55, edgecolor="black", linewidth=0.5)
        ax.set_xlabel(label + " per cycle")
        ax.set_xscale("symlog", linthresh=1.0)  # sanlock's hundreds beside the DLM's few
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)))
    axes[0].set_yticklabels([("AB"[di] + ": " if len(docs) > 1 else "") +
                             f"{label_of(r)}, {r['path']}" for di, r in rows], fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(f"{scenario}: cost per cycle on the measuring node (log scales, linear below 1)")
    return [figs.save(fig, f"cost-{scenario}", f"{scenario}: cost per cycle")]


def contention_table(doc):
    """Throughput and fairness of every contended block."""
    rows = []
    for r in doc["results"]:
        if r["scenario"] != "contended" or "throughput_per_second" not in r:
            continue
        runs = [x.get("throughput_per_second", 0) for x in r.get("runs", [])]
        grants = r.get("runs", [{}])[0].get("grants_per_owner", [])
        cls = "" if trusted(r) else " class='noisy'"
        rows.append(
            f"<tr{cls}><td>{esc(r['backend'])}</td><td>{esc(r.get('placement', ''))}</td>"
            f"<td>{esc(r['path'])}</td><td>{r.get('owners', '')}</td>"
            f"<td>{esc(r.get('distribution', ''))}</td>"
            f"<td>{r['throughput_per_second']:.0f}</td>"
            f"<td>{', '.join(f'{x:.0f}' for x in runs)}</td>"
            f"<td>{r.get('fairness_jain', 0):.3f}</td>"
            f"<td>{esc(' '.join(str(g) for g in grants[:16]))}{' …' if len(grants) > 16 else ''}</td>"
            f"<td>{fmt(r['summary']['median'], r['metric'])} µs / {fmt(r['summary']['p99'], r['metric'])} µs</td></tr>")
    if not rows:
        return ""
    return ("<h3>Contention</h3><p>Grants per second of all owners together (median of the runs; "
            "each run's figure listed), Jain's fairness index of the owners' grants (1: all got "
            "the same; 1/n: one got everything), the first run's grants per owner, and the wait "
            "for a grant (median / p99).</p><table><tr><th>backend</th><th>where</th><th>path</th>"
            "<th>owners</th><th>picks</th><th>grants/s</th><th>runs</th><th>Jain</th>"
            "<th>grants per owner (run 1)</th><th>wait</th></tr>" + "".join(rows) + "</table>")


def throughput_figure(figs, docs, scenario):
    """Grants per second against the number of owners, one line per backend,
    path and pick distribution (contended)."""
    import matplotlib.pyplot as plt
    series = {}
    for di, d in enumerate(docs):
        for r in d["results"]:
            if r["scenario"] != scenario or "throughput_per_second" not in r:
                continue
            k = (di, r["backend"], r["path"], r.get("distribution", ""),
                 "lab" if r.get("nodes", 1) > 1 else "host")
            series.setdefault(k, []).append((r.get("owners", 0), r["throughput_per_second"]))
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"raw": ":", "in-process": "-", "latchd": "--"}
    for (di, be, path, dist, place), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if dist == "uniform" else "^",
                linestyle=styles.get(path, "-"), alpha=1.0 if di == 0 else 0.55,
                label=f"{'AB'[di] + ': ' if len(docs) > 1 else ''}{be} {path}, {dist}"
                      f"{', ' + place if place == 'lab' else ''}")
    ax.set_xlabel("owners (all nodes)")
    ax.set_ylabel("grants per second")
    ax.set_yscale("log")
    ax.set_title(f"{scenario}: throughput against owners")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return [figs.save(fig, f"throughput-{scenario}", f"{scenario}: grants per second")]


def failover_trials(doc):
    """Every failover trial of a document: (result, trial)."""
    out = []
    for r in doc["results"]:
        if r["scenario"] != "failover":
            continue
        for run in r.get("runs", []):
            t = run.get("trial") if isinstance(run, dict) else None
            if isinstance(t, dict):
                out.append((r, t))
    return out


def secs(v):
    return f"{v:.2f} s" if isinstance(v, (int, float)) else "–"


def fenced(t):
    """When the lab fenced the holder's node in a trial, with the result."""
    for e in t.get("events", []):
        if e.get("event") == "fence":
            rest = " ".join(w for w in str(e.get("rest", "")).split() if w.startswith("result="))
            return f"{e.get('at_s', 0):.1f} s {esc(rest[7:])}"
    return "–"


def failover_table(doc):
    """One row per failover trial: the fault, what was expected and what
    happened, and the timeline's parts."""
    rows = []
    for r, t in failover_trials(doc):
        ok = t.get("as_expected", False)
        cls = "" if ok else " class='noisy'"
        events = "; ".join(f"{e.get('event')} {e.get('target')} at {e.get('at_s', 0):.1f} s"
                           f"{' (' + e['rest'] + ')' if e.get('rest') else ''}"
                           for e in t.get("events", [])[1:])
        rows.append(
            f"<tr{cls}><td>{esc(r['backend'])}</td><td>{esc(t.get('fault', ''))}</td>"
            f"<td>{esc(t.get('expected', ''))}</td><td>{esc(t.get('outcome', ''))}"
            f"{'' if ok else ' (NOT AS EXPECTED)'}"
            f"{'; a known limit: ' + esc(t['known_limit']) if t.get('known_limit') else ''}</td>"
            f"<td>{secs(t.get('detection_s'))} {esc(t.get('detected_as', ''))}</td>"
            f"<td>{secs(t.get('grant_after_detection_s'))}</td><td>{secs(t.get('grant_s'))}</td>"
            f"<td>{fenced(t)}</td><td>{esc(events)}</td></tr>")
    if not rows:
        return ""
    lab = doc.get("lab", {})
    san = lab.get("sanlock", {}) if isinstance(lab, dict) else {}
    return ("<h3>Failover</h3><p>Node 2 holds a lease through latchd, node 3 waits for it, and "
            "a fault strikes node 2. Times are seconds after the fault took effect, on the "
            "host's clock: <i>detection</i> is when node 3 saw the holder fail (DLM: corosync "
            "membership; sanlock: the holder's host lease FAIL; posixfd: nothing to see), "
            "<i>then grant</i> the rest (fencing, recovery, lease expiry, the grant itself), "
            "<i>fenced</i> when the lab's fencing took node 2 (its event log; the trial's "
            "window ends at the grant, so a later fence is not shown). Expected: <i>grant</i> (the survivor gets "
            "the lease), <i>kept</i> (it must not: latchd was killed and restarted while its "
            "owner lived), <i>lost</i> (the backend cannot keep it, a documented limit). "
            "Timeouts: corosync token "
            f"{esc(lab.get('corosync_token_ms', '?') if isinstance(lab, dict) else '?')} ms, "
            f"sanlock io_timeout {esc(san.get('io_timeout_s', '?'))} s, NFS lease "
            f"{esc(lab.get('nfs_lease_s', '?') if isinstance(lab, dict) else '?')} s.</p>"
            "<table><tr><th>backend</th><th>fault</th><th>expected</th><th>outcome</th>"
            "<th>detection</th><th>then grant</th><th>grant</th><th>fenced</th>"
            "<th>the lab's events</th></tr>" + "".join(rows) + "</table>")


def failover_figure(figs, docs, scenario):
    """The failover timelines: one bar per trial, detection then the rest
    up to the grant; a trial without a grant is a hatched bar over its
    whole window."""
    if scenario != "failover":
        return []
    import matplotlib.pyplot as plt
    bars = []
    for di, d in enumerate(docs):
        for r, t in failover_trials(d):
            bars.append((di, r["backend"], t))
    if not bars:
        return []
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(bars) + 1.5))
    labels = []
    for y, (di, be, t) in enumerate(bars):
        det, grant = t.get("detection_s"), t.get("grant_s")
        alpha = 1.0 if di == 0 else 0.55
        if isinstance(grant, (int, float)):
            if isinstance(det, (int, float)) and det <= grant:
                ax.barh(y, det, color="#f0a030", alpha=alpha)
                ax.barh(y, grant - det, left=det, color="#3070c0", alpha=alpha)
            else:
                ax.barh(y, grant, color="#3070c0", alpha=alpha)
        else:
            window = t.get("window_s") or t.get("limit_s") or 0
            ax.barh(y, window, color="#dddddd", hatch="//", edgecolor="#888888", alpha=alpha)
        for e in t.get("events", [])[1:]:
            if e.get("event") == "fence":
                ax.plot(e.get("at_s", 0), y, marker="x", color="black")
        labels.append(f"{'AB'[di] + ': ' if len(docs) > 1 else ''}{be}, {t.get('fault', '')}: "
                      f"{t.get('outcome', '')}")
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds after the fault (host clock)")
    ax.set_title("failover: detection (orange), then fencing/recovery/grant (blue); "
                 "x: a fence; hatched: no grant in the window", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return [figs.save(fig, "failover-timelines", "failover: timelines per backend and fault")]


def scale_results(doc):
    return [r for r in doc["results"] if r["scenario"] == "scale"]


def scale_table(doc):
    """One row per backend and number of locks: the steps' times and the
    memory held."""
    rows = []
    for r in scale_results(doc):
        held = r.get("memory_held") or {}
        before = r.get("memory_before") or {}

        def mem(k, m=held):
            return f"{m[k]:,}" if isinstance(m.get(k), int) else "–"
        grown = (f"{held['latchd_rss_kib'] - before['latchd_rss_kib']:,}"
                 if isinstance(held.get("latchd_rss_kib"), int)
                 and isinstance(before.get("latchd_rss_kib"), int) else "–")
        ok = r.get("outcome") == "held"
        cls = "" if ok else " class='noisy'"
        rows.append(
            f"<tr{cls}><td>{esc(r['backend'])}</td><td>{r.get('locks', '')}</td>"
            f"<td>{esc(r.get('outcome', ''))}</td><td>{secs(r.get('take_s'))}</td>"
            f"<td>{secs(r.get('adopt_s'))}</td><td>{secs(r.get('restart_to_answer_s'))}</td>"
            f"<td>{secs(r.get('release_s'))}</td><td>{mem('latchd_rss_kib')} (+{grown})</td>"
            f"<td>{mem('latchd_fds')}</td><td>{mem('sanlock_rss_kib')}</td>"
            f"<td>{mem('dlm_lkb_objects')} / {mem('dlm_rsb_objects')}</td></tr>")
    if not rows:
        return ""
    return ("<h3>Scale</h3><p>One owner on node 1 takes N exclusive leases through latchd "
            "(requests of 500), latchd is killed -9 and started again (<i>adopt</i>: what its "
            "log says adoption took; <i>restart</i>: from starting it to its first answer), "
            "and the owner is unregistered (<i>release</i>). Memory while holding them: "
            "latchd's resident set (KiB, and its growth), its open files, sanlock's resident "
            "set, the kernel DLM's lock / resource objects in the slab (the whole node's). "
            "Red: not every lock was taken.</p><table><tr><th>backend</th><th>locks</th>"
            "<th>outcome</th><th>take</th><th>adopt</th><th>restart</th><th>release</th>"
            "<th>latchd RSS KiB</th><th>latchd files</th><th>sanlock RSS KiB</th>"
            "<th>DLM lkb / rsb</th></tr>" + "".join(rows) + "</table>")


def scale_figure(figs, docs, scenario):
    """Time to take, adopt and release against the number of locks, and
    latchd's resident set while holding them."""
    if scenario != "scale":
        return []
    import matplotlib.pyplot as plt
    series = {}
    for di, d in enumerate(docs):
        for r in scale_results(d):
            if r.get("outcome") != "held":
                continue
            series.setdefault((di, r["backend"]), []).append(r)
    if not series:
        return []
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    marks = {"take_s": "o-", "adopt_s": "s--", "release_s": "^:"}
    for (di, be), rs in sorted(series.items()):
        rs.sort(key=lambda r: r["locks"])
        alpha = 1.0 if di == 0 else 0.55
        tag = f"{'AB'[di] + ': ' if len(docs) > 1 else ''}{be}"
        for k, style in marks.items():
            pts = [(r["locks"], r[k]) for r in rs if isinstance(r.get(k), (int, float)) and r[k] > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, alpha=alpha,
                        label=f"{tag} {k[:-2]}")
        pts = [(r["locks"], (r.get("memory_held") or {}).get("latchd_rss_kib")) for r in rs]
        pts = [p for p in pts if isinstance(p[1], int)]
        if pts:
            bx.plot([p[0] for p in pts], [p[1] / 1024 for p in pts], "o-", alpha=alpha, label=tag)
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlabel("locks held by one owner")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("seconds")
    ax.set_title("take, adopt (latchd's figure), release")
    bx.set_ylabel("latchd resident set while holding (MiB)")
    bx.set_title("latchd's memory")
    ax.legend(fontsize=7)
    bx.legend(fontsize=7)
    return [figs.save(fig, "scale", "scale: time and memory against the number of locks")]


def compare_table(a, b):
    ia = {key(r): r for r in a["results"]}
    ib = {key(r): r for r in b["results"]}
    diffs = differences(a, b)
    rows = []
    for k in sorted(set(ia) | set(ib)):
        ra, rb = ia.get(k), ib.get(k)
        m = k[5]
        cells = [esc(x) for x in k[:5]]
        if ra is None or rb is None:
            rows.append("<tr><td>" + "</td><td>".join(cells) + "</td>"
                        f"<td>{'—' if ra is None else fmt(ra['summary']['median'], m)}</td>"
                        f"<td>{'—' if rb is None else fmt(rb['summary']['median'], m)}</td>"
                        f"<td></td><td>only in {'B' if ra is None else 'A'}</td></tr>")
            continue
        ma, mb = ra["summary"]["median"], rb["summary"]["median"]
        ratio = f"{mb / ma:.2f}" if ma > 0 else "—"
        why = []
        if not trusted(ra):
            why.append("A too noisy")
        if not trusted(rb):
            why.append("B too noisy")
        if diffs:
            why.append("environment or parameters differ")
        ok = not why
        mark = "" if ok else " class='noisy'"
        rows.append(f"<tr{mark}><td>" + "</td><td>".join(cells) + "</td>"
                    f"<td>{fmt(ma, m)}</td><td>{fmt(mb, m)}</td><td>{ratio}</td>"
                    f"<td>{'comparable' if ok else 'not comparable: ' + ', '.join(why)}</td></tr>")
    return ("<table><tr><th>scenario</th><th>backend</th><th>where</th><th>path</th><th>mode</th>"
            "<th>A median (µs)</th><th>B median (µs)</th><th>B / A</th><th></th></tr>"
            + "".join(rows) + "</table>")


STYLE = """
body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0;font-size:90%}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:left}
tr.noisy{background:#fde2e2}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:0.5em}
figure{margin:1em 0} figcaption{font-size:90%;color:#555}
img{max-width:100%}
"""

# Counts the figures the browser decoded: the headless test reads these
# attributes from the rendered page.
CHECK = """
<script>
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('figure img');
  var ok = 0;
  imgs.forEach(function (i) { if (i.complete && i.naturalWidth > 0 && i.naturalHeight > 0) ok++; });
  document.body.setAttribute('data-figures', String(imgs.length));
  document.body.setAttribute('data-figures-decoded', String(ok));
});
</script>
"""


def page(docs, figs):
    a = docs[0]
    two = len(docs) == 2
    title = "latchbench report" + (": two runs compared" if two else "")
    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
         f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    if two:
        diffs = differences(a, docs[1])
        h.append("<p class='warn'><b>These figures come from two different runs</b> "
                 f"(A: {esc(a.get('started', '?'))}, B: {esc(docs[1].get('started', '?'))}). "
                 "Machines are noisy: a ratio is meaningful only where both runs are trusted and "
                 "were made on the same machine with the same parameters. "
                 + ("They differ in: " + "; ".join(esc(d) for d in diffs) if diffs
                    else "Environment and parameters match (load aside).") + "</p>")
    for di, d in enumerate(docs):
        w = load_warning(d)
        if w:
            h.append(f"<p class='warn'>{'AB'[di] + ': ' if two else ''}{esc(w)}</p>")
        noisy = sum(1 for r in d["results"] if not trusted(r))
        if noisy:
            h.append(f"<p class='warn'>{'AB'[di] + ': ' if two else ''}{noisy} of "
                     f"{len(d['results'])} results are too noisy to compare (their run medians "
                     f"differ by more than {d['parameters'].get('max_run_spread', '?')} of their "
                     "median); they are marked red below and hatched in the figures.</p>")
    for di, d in enumerate(docs):
        h.append(f"<h2>Machine and parameters{' (' + 'AB'[di] + ')' if two else ''}</h2><table>")
        for k, v in env_rows(d):
            h.append(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>")
        h.append("</table>")
    if two:
        h.append("<h2>Summary: B against A</h2>" + compare_table(a, docs[1]))
    for di, d in enumerate(docs):
        h.append(f"<h2>Summary{' (' + 'AB'[di] + ')' if two else ''}</h2>")
        h.append("<p>Medians, percentiles (nearest rank: every figure was measured) and maxima "
                 "of one cycle over every run; the verdict says whether the runs agree well "
                 "enough to compare.</p>")
        h.append(summary_table(d))
        h.append(raw_ratio_table(d))
        h.append(agent_share_table(d))
        h.append(cost_table(d))
        h.append(contention_table(d))
        h.append(failover_table(d))
        h.append(scale_table(d))
    present = [s for s in SCENARIOS if any(r["scenario"] == s for d in docs for r in d["results"])]
    other = sorted({r["scenario"] for d in docs for r in d["results"]} - set(SCENARIOS))
    # "cost" is measured inside other scenarios' blocks (cost_per_cycle).
    has_cost = any(r.get("cost_per_cycle") for d in docs for r in d["results"])
    missing = [s for s in SCENARIOS if s not in present and not (s == "cost" and has_cost)]
    for sc in present + other:
        h.append(f"<h2>Scenario: {esc(sc)}</h2>")
        cycles = sorted({r.get("cycle", "") for d in docs for r in d["results"]
                         if r["scenario"] == sc and r.get("cycle")})
        if cycles:
            h.append("<p>One cycle: " + "; ".join(esc(c) for c in cycles) + "</p>")
        names = cdf_figures(figs, docs, sc) + medians_figure(figs, docs, sc) + \
            runs_figure(figs, docs, sc) + cost_figure(figs, docs, sc) + \
            throughput_figure(figs, docs, sc) + failover_figure(figs, docs, sc) + \
            scale_figure(figs, docs, sc)
        for name in names:
            _, cap, png = next(x for x in figs.made if x[0] == name)
            h.append(f"<figure id='{esc(name)}'><img alt='{esc(cap)}' src='data:image/png;base64,"
                     f"{base64.b64encode(png).decode()}'><figcaption>{esc(cap)} "
                     f"(figures/{esc(name)}.png, .svg)</figcaption></figure>")
    if missing:
        h.append("<h2>Not measured in this report</h2><p>These scenarios are in no document "
                 "shown here: " + ", ".join(esc(m) for m in missing) + ".</p>")
    h.append(CHECK + "</body></html>")
    return "\n".join(h)


def main(argv):
    if len(argv) not in (3, 4) or argv[1].startswith("-"):
        print("usage: latchbench report [--out=DIR] A.json [B.json]", file=sys.stderr)
        return 2
    out_dir = argv[1]
    try:
        docs = [load(p) for p in argv[2:]]
    except BadInput as e:
        print(f"latchbench report: {e}", file=sys.stderr)
        return 2
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        print(f"latchbench report: {out_dir}: exists and is not a directory", file=sys.stderr)
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.hashsalt"] = "latchbench"  # the same input, the same SVG
    except ImportError:
        print("latchbench report: matplotlib is missing (Debian: python3-matplotlib; "
              "scripts/install-deps installs it)", file=sys.stderr)
        return 1
    try:
        os.makedirs(out_dir, exist_ok=True)
        figs = Figures(out_dir)
        text = page(docs, figs)
        tmp = os.path.join(out_dir, ".index.html.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, os.path.join(out_dir, "index.html"))
    except OSError as e:
        print(f"latchbench report: writing {out_dir}: {e}", file=sys.stderr)
        return 1
    print(f"{os.path.join(out_dir, 'index.html')}: {len(figs.made)} figures "
          f"({os.path.join(out_dir, 'figures')}/*.png, *.svg)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
