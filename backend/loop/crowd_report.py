"""`cellloop report --html`: one self-contained page a lab looks at (matplotlib plots embedded as PNG), and the same
figures as JSON beside it: model F1 per cycle on the frozen test split, operations and seconds per distinct cell
per batch (the loop's learning curve), cells annotated, per-worker quality, the replica agreement histogram,
difficulty against prelabel error, and what the annotation time costs at crowd, trained and pathologist rates."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.loop.batches import batch_status
from backend.loop.crowd import worker_scores
from backend.loop.qc import QC_BATCH
from backend.store.models import Batch, CropAgreement, Project, Task, TaskState
from backend.store.storage import Storage
from backend.tasks import TaskService
from backend.tasks import crowd as task_crowd

# the paper's rates (Greenwald et al. 2022): crowd annotators, trained annotators, pathologists (at least)
HOURLY_RATES = {"crowd": 6.0, "trained": 30.0, "pathologist": 150.0}


def _batches(project: Project) -> list[Batch]:
    return sorted((b for b in project.batches if b.name != QC_BATCH), key=lambda b: b.id)


def _final_task(session: Session, task: Task) -> Task | None:
    """The labels a crop ended with: its consensus or expert-approved replica, or the crop itself when approved."""
    if task.crop_group is None:
        return task if task.state is TaskState.approved else None
    group = list(session.scalars(select(Task).where(Task.crop_group == task.crop_group,
                                                    Task.state == TaskState.approved)))
    chosen = task_crowd.stitchable(group)
    return chosen[0] if chosen else None


def figures(session: Session, storage: Storage, project: Project) -> dict:
    """Every figure's numbers (what the plots draw)."""
    from pipeline.metrics import object_accuracy

    batches = _batches(project)
    cycles = [{"batch": b.name, "prelabel_model": (b.cycle or {}).get("current"),
               "prelabel_f1": (b.cycle or {}).get("current_f1"), "trained": (b.cycle or {}).get("candidate"),
               "trained_f1": (b.cycle or {}).get("candidate_f1")} for b in batches if b.cycle]
    effort, seconds_total = [], 0.0
    for b in batches:
        status = batch_status(session, storage, b)
        seconds_total += status["seconds"]
        effort.append({"batch": b.name, "cells": status["submitted_cells"], "edits": status["edits"],
                       "seconds": status["seconds"], "edits_per_cell": status["edits_per_cell"],
                       "seconds_per_cell": status["seconds_per_cell"]})
    workers = worker_scores(session, storage, project=project)
    agreements = [float(a) for a in session.scalars(select(CropAgreement.agreement).join(
        Batch, Batch.id == CropAgreement.batch_id).where(Batch.project_id == project.id).order_by(CropAgreement.id))]
    counts, edges = np.histogram(agreements, bins=10, range=(0.0, 1.0))
    svc = TaskService(session, storage)
    difficulty = []
    for task in session.scalars(select(Task).join(Task.batch).where(
            Batch.project_id == project.id, Task.kind == "crop", Task.difficulty.is_not(None)).order_by(Task.id)):
        if task.crowd_role not in (None, task_crowd.REPLICA) or (task.crop_group not in (None, task.id)):
            continue  # one point per crop: copies share its difficulty
        final = _final_task(session, task)
        if final is None:
            continue
        f1 = object_accuracy(svc.labels(final)[..., 0], svc.labels_at(task, 0)[..., 0])["f1"]
        difficulty.append({"task_id": task.id, "difficulty": round(float(task.difficulty), 4),
                           "prelabel_error": round(1.0 - float(f1), 4)})
    hours = seconds_total / 3600.0
    cells = sum(e["cells"] or 0 for e in effort)
    cost = {"hours": round(hours, 4), "cells": cells,
            "rates": HOURLY_RATES,
            "cost": {k: round(hours * rate, 2) for k, rate in HOURLY_RATES.items()},
            "per_1000_cells": {k: (round(1000 * hours * rate / cells, 2) if cells else None)
                               for k, rate in HOURLY_RATES.items()}}
    return {"project": project.name, "f1_per_cycle": cycles, "effort_per_batch": effort, "workers": workers,
            "agreement_histogram": {"edges": [round(float(e), 2) for e in edges], "counts": counts.tolist(),
                                    "n": len(agreements)},
            "difficulty_vs_error": difficulty, "cost": cost}


# --- drawing -------------------------------------------------------------------------------------------------

def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _plots(data: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # no display: the page embeds the pictures
    import matplotlib.pyplot as plt

    plots = {}
    fig, ax = plt.subplots(figsize=(5, 3))
    cycles = data["f1_per_cycle"]
    x = np.arange(len(cycles))
    ax.plot(x, [c["prelabel_f1"] if c["prelabel_f1"] is not None else np.nan for c in cycles], "o-",
            label="model before the cycle")
    ax.plot(x, [c["trained_f1"] if c["trained_f1"] is not None else np.nan for c in cycles], "s-",
            label="model trained in the cycle")
    ax.set_xticks(x, [c["batch"] for c in cycles])
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1, frozen test split")
    ax.set_title("Model F1 per cycle" + ("" if cycles else " (no cycle yet)"))
    ax.legend(fontsize=7)
    plots["f1_per_cycle"] = _png(fig)

    effort = data["effort_per_batch"]
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(effort))
    ax.bar(x - 0.2, [e["edits_per_cell"] or 0 for e in effort], 0.4, label="operations per cell")
    ax2 = ax.twinx()
    ax2.bar(x + 0.2, [e["seconds_per_cell"] or 0 for e in effort], 0.4, color="tab:orange", label="seconds per cell")
    ax.set_xticks(x, [e["batch"] for e in effort])
    ax.set_ylabel("operations / distinct cell")
    ax2.set_ylabel("seconds / distinct cell")
    ax.set_title("Effort per distinct cell per batch")
    plots["effort_per_batch"] = _png(fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(x, [e["cells"] or 0 for e in effort])
    ax.set_xticks(x, [e["batch"] for e in effort])
    ax.set_ylabel("distinct cells submitted")
    ax.set_title("Cells annotated")
    plots["cells_annotated"] = _png(fig)

    workers = data["workers"]
    fig, ax = plt.subplots(figsize=(5, 3))
    x = np.arange(len(workers))
    ax.bar(x - 0.2, [w["gold_f1"] if w["gold_f1"] is not None else 0 for w in workers], 0.4, label="gold F1")
    ax.bar(x + 0.2, [w["agreement"] if w["agreement"] is not None else 0 for w in workers], 0.4,
           label="agreement with other replicas")
    ax.set_xticks(x, [w["worker"] for w in workers], rotation=30, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title("Per-worker quality")
    ax.legend(fontsize=7)
    plots["workers"] = _png(fig)

    hist = data["agreement_histogram"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(hist["edges"][:-1], hist["counts"], width=0.09, align="edge")
    ax.set_xlim(0, 1)
    ax.set_xlabel("mean pairwise F1 of a crop's replicas")
    ax.set_ylabel("crops")
    ax.set_title(f"Replica agreement ({hist['n']} crops)")
    plots["agreement_histogram"] = _png(fig)

    points = data["difficulty_vs_error"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.scatter([p["difficulty"] for p in points], [p["prelabel_error"] for p in points], s=12)
    ax.set_xlabel("difficulty at prelabel time")
    ax.set_ylabel("1 - F1 of the prelabel")
    ax.set_title("Difficulty against prelabel error")
    plots["difficulty_vs_error"] = _png(fig)

    cost = data["cost"]
    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(cost["cost"])
    ax.bar(names, [cost["cost"][n] for n in names])
    ax.set_ylabel("US$")
    ax.set_title(f"Cost of {cost['hours']:.2f} h of annotation")
    plots["cost"] = _png(fig)
    return plots


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(name: str, rows: list[dict]) -> str:
    if not rows:
        return f'<p class="empty" data-table="{name}">none yet</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-key="{html.escape(c)}">{_fmt(r[c])}</td>' for c in columns) + "</tr>"
                   for r in rows)
    return f'<table data-table="{name}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


TITLES = {"f1_per_cycle": "Model F1 per cycle (frozen test split)", "effort_per_batch": "Effort per distinct cell",
          "cells_annotated": "Cells annotated", "workers": "Per-worker quality",
          "agreement_histogram": "Replica agreement", "difficulty_vs_error": "Difficulty against prelabel error",
          "cost": "Cost at hourly rates"}


def render_html(data: dict, plots: dict[str, str]) -> str:
    cost = data["cost"]
    cost_rows = [{"who": k, "rate_per_h": cost["rates"][k], "cost": cost["cost"][k],
                  "per_1000_cells": cost["per_1000_cells"][k]} for k in cost["rates"]]
    tables = {"f1_per_cycle": data["f1_per_cycle"], "effort_per_batch": data["effort_per_batch"],
              "workers": data["workers"], "cost": cost_rows}
    sections = []
    for name, png in plots.items():
        table = _table(name, tables[name]) if name in tables else ""
        sections.append(f'<section id="{name}"><h2>{TITLES[name]}</h2>'
                        f'<img data-figure="{name}" alt="{TITLES[name]}" src="data:image/png;base64,{png}">{table}'
                        f"</section>")
    # script content is not entity-decoded: keep it JSON, with no "</script>" possible inside
    embedded = json.dumps(data).replace("<", "\\u003c")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>CellLoop report: '
            f'{html.escape(data["project"])}</title><style>body{{font-family:sans-serif;max-width:60em;margin:auto}}'
            f'table{{border-collapse:collapse;font-size:.85em}}td,th{{border:1px solid #ccc;padding:2px 6px}}'
            f'img{{display:block;max-width:100%}}</style></head><body><h1>CellLoop report: '
            f'{html.escape(data["project"])}</h1><p>{cost["cells"]} distinct cells, {cost["hours"]:.2f} h of '
            f'annotation</p>{"".join(sections)}'
            f'<script type="application/json" id="figures">{embedded}</script></body></html>')


def write_report(session: Session, storage: Storage, project: Project, path) -> dict:
    """Write the page to ``path`` and its figures to the same name with .json; the figures, with ``plots`` (the
    names drawn) and ``json_path``."""
    data = figures(session, storage, project)
    plots = _plots(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data, plots))
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=1) + "\n")
    return {**data, "plots": list(plots), "json_path": str(json_path)}
