"""`cellloop gold add | consensus | crowd-report | workers`, and the crowd options of `publish` (--replicas,
--gold-rate, --experts-for) and `report` (--html). Arguments and printing only; the work is in `backend.loop.crowd`
and `backend.loop.crowd_report`."""
from __future__ import annotations

import csv
import json
import sys

from pipeline.cli import CLIError

CROWD_COLUMNS = ["task_id", "crop", "batch", "worker", "gold", "state", "time_open_s", "cells", "edits", "gold_f1",
                 "agreement", "verdict"]


def _open_batch(args):
    from backend.cli.loop_commands import _batch, _open

    config, session, storage = _open(args)
    return config, session, storage, _batch(session, args)


def cmd_gold_add(args) -> int:
    from backend.loop import crowd

    config, session, storage, batch = _open_batch(args)
    made = crowd.add_gold(session, storage, batch)
    print(f"batch {batch.name!r}: {made} expert-approved crops made gold; mix them into a batch with "
          f"`cellloop publish --batch NEXT --gold-rate 0.05`")
    return 0


def cmd_consensus(args) -> int:
    from backend.loop import crowd

    config, session, storage, batch = _open_batch(args)
    s = crowd.run_consensus(session, storage, batch, threshold=args.threshold)
    mean = f", mean agreement {sum(s['agreements']) / len(s['agreements']):.3f}" if s["agreements"] else ""
    print(f"batch {batch.name!r}: {s['merged']} crops merged by consensus, {s['expert']} sent to the experts first "
          f"(agreement under {args.threshold}), {s['waiting']} still waiting for replicas, {s['already']} done "
          f"before{mean}")
    return 0


def cmd_crowd_report(args) -> int:
    from backend.loop import crowd

    config, session, storage, batch = _open_batch(args)
    rows = crowd.crowd_rows(session, storage, batch)
    out = open(args.out, "w", newline="") if args.out else sys.stdout
    try:
        if args.csv:
            writer = csv.DictWriter(out, fieldnames=CROWD_COLUMNS)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row[k] is None else row[k]) for k in CROWD_COLUMNS})
        else:
            print(json.dumps(rows, indent=1), file=out)
    finally:
        if args.out:
            out.close()
    if args.out:
        print(f"{len(rows)} (task, worker) rows written to {args.out}")
    return 0


def cmd_workers(args) -> int:
    from backend.cli.loop_commands import _json_or_table, _open, _project
    from backend.loop import crowd

    config, session, storage = _open(args)
    if args.batch:
        _, _, _, batch = _open_batch(args)
        rows = crowd.worker_scores(session, storage, batch=batch)
    elif args.project:
        rows = crowd.worker_scores(session, storage, project=_project(session, args.project))
    else:
        raise CLIError("name a --batch or a --project")
    _json_or_table(args, rows)
    return 0


def _publish_with_crowd(plain):
    def run(args):
        from backend.loop import crowd

        config, session, storage, batch = _open_batch(args)
        # a batch published with replicas or gold lists its links the crowd way again (shuffled, no consensus task)
        if args.replicas == 1 and not args.gold_rate and not args.experts_for and not crowd.has_crowd_tasks(
                session, batch):
            session.close()
            return plain(args)
        if args.base_url:
            from backend.cli.admin_commands import _check_base_url, read_settings, write_setting

            args.base_url = _check_base_url(args.base_url)
            if read_settings(config.instance_dir).get("base_url") != args.base_url:
                write_setting(config.instance_dir, "base_url", args.base_url)
        out = open(args.out, "w") if args.out else sys.stdout
        try:
            s = crowd.publish_crowd(session, storage, config, batch, out, args.base_url, replicas=args.replicas,
                                    gold_rate=args.gold_rate, experts_for=args.experts_for)
        finally:
            if args.out:
                out.close()
        print(f"batch {batch.name!r} published: {s['links']} crowd links ({s['crops']} crops x {s['replicas']} "
              f"replicas, {s['gold']} gold){' written to ' + args.out if args.out else ''}; {s['experts']} hardest "
              f"crops in the experts' queue", file=sys.stderr if not args.out else sys.stdout)
        return 0
    return run


def _report_with_html(plain):
    def run(args):
        if not args.html:
            return plain(args)
        from backend.cli.loop_commands import _open, _project
        from backend.loop import crowd_report

        config, session, storage = _open(args)
        project = _project(session, args.project)
        figures = crowd_report.write_report(session, storage, project, args.html)
        print(f"report of project {project.name!r} written to {args.html} ({len(figures['plots'])} plots), its "
              f"figures to {figures['json_path']}")
        return 0
    return run


def register(sub) -> None:
    from backend.cli.admin_commands import with_instance as common

    p = sub.add_parser("gold", help="gold tasks (honeypots) from expert-approved crops")
    actions = p.add_subparsers(dest="gold_action", required=True)
    c = common(actions.add_parser("add", help="make the batch's expert-approved crops gold"))
    c.add_argument("--batch", required=True)
    c.add_argument("--project")
    c.set_defaults(func=cmd_gold_add)

    p = common(sub.add_parser("consensus", help="merge each crop's replicas (or send them to the experts first)"))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--threshold", type=float, default=0.6,
                   help="least mean pairwise F1 of a crop's replicas to merge them (default 0.6)")
    p.set_defaults(func=cmd_consensus)

    p = common(sub.add_parser("crowd-report", help="one row per (task, worker): what a lab pays, bonuses or blocks"))
    p.add_argument("--batch", required=True)
    p.add_argument("--project")
    p.add_argument("--csv", action="store_true", help="CSV (default JSON)")
    p.add_argument("--out", help="write here instead of stdout")
    p.set_defaults(func=cmd_crowd_report)

    p = common(sub.add_parser("workers", help="per worker: gold F1, agreement, seconds and edits per cell, rejections"))
    p.add_argument("--batch")
    p.add_argument("--project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workers)

    publish = sub.choices["publish"]
    publish.add_argument("--replicas", type=int, default=1, help="give each crop to this many workers (default 1)")
    publish.add_argument("--gold-rate", type=float, default=0.0,
                         help="share of the links that are gold tasks (from `cellloop gold add`), e.g. 0.05")
    publish.add_argument("--experts-for", type=float, default=0.0,
                         help="route this share of the hardest crops (prelabel difficulty) to the experts")
    publish.set_defaults(func=_publish_with_crowd(publish.get_default("func")))

    report = sub.choices["report"]
    report.add_argument("--html", help="write one self-contained HTML page with plots here (and its figures as "
                        "JSON beside it)")
    report.set_defaults(func=_report_with_html(report.get_default("func")))
