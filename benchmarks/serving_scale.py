"""Serving at scale, simulated: degrade-then-scale against a fixed sub-network with queue-length autoscaling.

    python benchmarks/serving_scale.py --policy fixed --target-ongoing 2 --json out/fixed-2.json     # one cell
    python benchmarks/serving_scale.py --policy degrade --degraded-up 0.2 --slack 0.7 --json out/d.json
    python benchmarks/serving_scale.py --combine out/*.json                                          # the table
    python benchmarks/serving_scale.py --sweep out/                                                  # the default cells, then the table
    python benchmarks/serving_scale.py --tiny                                                        # a few seconds

Every cell replays the same bursty trace (:func:`rsvision.serve.simulate.bursty_trace`: a
Poisson process at a base rate with bursts at ``--burst-factor`` times it, ``--burst-share``
of the time; seeded) through :func:`rsvision.serve.simulate.simulate`: 1 to 64 replicas,
each running the server's scheduler unchanged on a simulated clock, its batches taking the
times of the latency table measured on this machine (``--profile``, written by
``benchmarks/serving.py``), a replica start-up delay, and the autoscaler of the policy:

- ``fixed``: every replica serves the most accurate sub-network (``fixed:``), the replica
  count follows Ray Serve's default rule on the requests waiting or running
  (``--target-ongoing`` per replica);
- ``static``: the same sub-network on ``--replicas`` replicas all the time (provisioned for
  the bursts, no autoscaling);
- ``degrade``: every replica runs ``adaptive``; the count follows the replicas' SLO signals
  (shed rate, share of batches below the most accurate sub-network).

Each cell starts with the replicas the base rate needs on the most accurate sub-network
(its capacity within the SLO, :func:`rsvision.serve.bound.capacity`) and writes its
attainment, effective accuracy (the profile's accuracy of the answering sub-network, for
answers within the SLO, over all requests), replica-seconds, and the fluid bound
(:func:`rsvision.serve.bound.fluid_bound`) at the trace's mean rate over the cell's mean
replica count: no policy spending those replica-seconds reaches a higher effective
accuracy on this trace's mean load. ``--combine`` prints the table and the comparison.

This is a simulation: the network's time is the table's (no scatter), routing is free and
instant, a replica's start-up is a fixed delay, and what a request costs outside the
worker (HTTP, decoding) is left out, as if it ran on other cores of the replica. It says what the policies would do with
this machine's latency table at a scale this 2-core machine cannot run.

The measured part drives the real Ray engine (``rsvision serve RUN --engine ray``) with the
step load of ``benchmarks/serving.py`` (the loads of ``--profile``, same seed, same
requests), one cell per replica count, the count held fixed (``--min-replicas`` =
``--max-replicas``):

    python benchmarks/serving_scale.py --measure 1 --run RUN --images DIR --json out/ray/ray-1.json
    python benchmarks/serving_scale.py --measure 2 --run RUN --images DIR --json out/ray/ray-2.json
    python benchmarks/serving_scale.py --combine-measured out/ray/*.json    # (a folder of their own: --combine reads simulated cells)

Each cell starts the server through ``benchmarks/serving.py``'s command line with the
engine options added, waits for it as that script does, drives it with
:func:`rsvision.serve.loadgen.run_load` and prints ``benchmarks/serving.py``'s table. On
one machine the replicas share its cores with Ray's proxy and the load generator: the cells
show the engine at work, not what more machines would add.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rsvision.errors import UserError
from rsvision.serve.bound import capacity, fluid_bound
from rsvision.serve.simulate import Autoscale, DegradeThenScale, QueueLength, bursty_trace, read_profile, simulate

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "benchmarks" / "results" / "serving" / "profile.json"
#: Static cells: replicas for the burst's peak rate on the most accurate sub-network, times these.
HEADROOM = (1.0, 1.5, 2.0)


def sweep(args: argparse.Namespace, profile) -> list[tuple[str, dict]]:
    """The default cells: each policy over the setting that trades replicas for attainment;
    the static counts from the burst's peak rate over the top sub-network's capacity."""
    peak = args.mean_rate / (1 + args.burst_share * (args.burst_factor - 1)) * args.burst_factor
    needed = peak / capacity(profile.latency_ms[profile.top], profile.slo_ms)
    return ([("fixed", {"target_ongoing": t}) for t in (1.0, 2.0, 4.0, 8.0)]
            + [("static", {"replicas": math.ceil(needed * h)}) for h in HEADROOM]
            + [("degrade", {"degraded_up": g, "slack": 0.7}) for g in (0.05, 0.2, 0.5)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", type=Path, default=PROFILE, help="latency table (ms), accuracies and SLO, as benchmarks/serving.py writes them")
    parser.add_argument("--policy", choices=["fixed", "static", "degrade"], help="the cell's policy")
    parser.add_argument("--replicas", type=int, default=16, help="static: the fixed sub-network on this many replicas, no autoscaling")
    parser.add_argument("--target-ongoing", type=float, default=2.0, help="fixed: requests waiting or running per replica (Ray Serve's default is 2)")
    parser.add_argument("--degraded-up", type=float, default=0.2, help="degrade: scale up above this share of batches below the top sub-network")
    parser.add_argument("--slack", type=float, default=0.7, help="degrade: scale down while one replica fewer would stay below this busy share")
    parser.add_argument("--mean-rate", type=float, default=1500.0, help="the trace's mean requests/s")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of trace")
    parser.add_argument("--burst-factor", type=float, default=4.0)
    parser.add_argument("--burst-share", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=64)
    parser.add_argument("--startup-s", type=float, default=10.0, help="seconds from a replica's launch to its first request")
    parser.add_argument("--down-s", type=float, default=30.0, help="seconds a lower target must hold before replicas are removed")
    parser.add_argument("--json", type=Path, help="write the cell here")
    parser.add_argument("--combine", type=Path, nargs="+", help="print the table of earlier cells")
    parser.add_argument("--sweep", type=Path, help="run the default cells into this folder, then combine them")
    parser.add_argument("--tiny", action="store_true", help="the sweep on a short, slow trace (seconds)")
    parser.add_argument("--measure", type=int, metavar="REPLICAS", help="measured: the step load against the Ray engine on this many replicas")
    parser.add_argument("--run", type=Path, help="--measure: the run folder to serve")
    parser.add_argument("--images", type=Path, help="--measure: held-out images in class folders (benchmarks/serving.py --train)")
    parser.add_argument("--serve-policy", default="adaptive", help="--measure: the server's --policy")
    parser.add_argument("--combine-measured", type=Path, nargs="+", help="print the table of earlier --measure cells")
    return parser.parse_args(argv)


def run_cell(args: argparse.Namespace, policy_name: str, settings: dict) -> dict:
    """Simulate one policy on the trace (module docstring); the cell's JSON."""
    profile = read_profile(args.profile)
    policy = DegradeThenScale(**settings) if policy_name == "degrade" else QueueLength(**({} if policy_name == "static" else settings))
    trace = bursty_trace(args.mean_rate, args.duration, args.seed, args.burst_factor, args.burst_share)
    if policy_name == "static":  # no autoscaling: the replicas a burst needs, all the time
        scale = Autoscale(settings["replicas"], settings["replicas"], args.startup_s, down_s=args.down_s)
    else:
        scale = Autoscale(args.min_replicas, args.max_replicas, args.startup_s, down_s=args.down_s)
    base = args.mean_rate / (1 + args.burst_share * (args.burst_factor - 1))
    initial = min(scale.max_replicas, max(scale.min_replicas, math.ceil(base / capacity(profile.latency_ms[profile.top], profile.slo_ms))))
    started = time.perf_counter()
    result = simulate(trace, profile, policy, scale, initial=initial)
    summary = result.summary(profile)
    mean_rate = len(trace) / args.duration
    bound = fluid_bound(mean_rate / summary["mean_replicas"], profile.accuracy, profile.latency_ms, profile.slo_ms)
    return {
        "policy": policy_name,
        "name": f"fixed, {settings['replicas']} replicas always" if policy_name == "static" else policy.name,
        "settings": settings,
        "trace": {"mean_rate": mean_rate, "duration_s": args.duration, "seed": args.seed, "burst_factor": args.burst_factor,
                  "burst_share": args.burst_share, "requests": len(trace)},
        "autoscale": {"min_replicas": scale.min_replicas, "max_replicas": scale.max_replicas, "startup_s": scale.startup_s,
                      "tick_s": scale.tick_s, "lookback_s": scale.lookback_s, "down_s": scale.down_s, "initial": initial},
        "profile": {"path": str(args.profile), "slo_ms": profile.slo_ms, "accuracy": profile.accuracy,
                    "latency_ms": {s: {str(b): ms for b, ms in row.items()} for s, row in profile.latency_ms.items()}},
        "result": summary,
        "bound": bound.as_dict(),
        "replicas": result.replicas,
        "seconds": time.perf_counter() - started,
    }


def dominates(degrade: dict, fixed: dict) -> str | None:
    """Why ``degrade`` beats ``fixed`` (the issue's test), or None: the same attainment or
    more with fewer replica-seconds, or a higher effective accuracy with no more."""
    d, f = degrade["result"], fixed["result"]
    if d["attainment"] >= f["attainment"] and d["replica_seconds"] < f["replica_seconds"]:
        return f"attainment {d['attainment']:.1f} % >= {f['attainment']:.1f} % with {d['replica_seconds'] / f['replica_seconds']:.2f}x the replica-seconds"
    if d["effective_accuracy"] > f["effective_accuracy"] and d["replica_seconds"] <= f["replica_seconds"]:
        return f"effective accuracy {d['effective_accuracy']:.1f} % > {f['effective_accuracy']:.1f} % with {d['replica_seconds'] / f['replica_seconds']:.2f}x the replica-seconds"
    return None


def combine(cells: list[dict]) -> int:
    """Print the table and, per fixed cell, whether a degrade-then-scale cell beats it; 0 when one beats every fixed cell."""
    if not cells:
        raise UserError("--combine: no cells")
    trace, scale, table = cells[0]["trace"], cells[0]["autoscale"], cells[0]["profile"]
    top = max(table["accuracy"], key=table["accuracy"].get)
    top_capacity = capacity({int(b): ms for b, ms in table["latency_ms"][top].items()}, table["slo_ms"])
    print(f"Simulated: {trace['requests']} requests over {trace['duration_s']:g} s (mean {trace['mean_rate']:.0f}/s, bursts at "
          f"{trace['burst_factor']:g}x for {100 * trace['burst_share']:.0f} % of the time, seed {trace['seed']}); SLO {cells[0]['profile']['slo_ms']:g} ms; "
          f"{scale['min_replicas']}-{scale['max_replicas']} replicas, start-up {scale['startup_s']:g} s, scale-down after {scale['down_s']:g} s; "
          f"latency table of {cells[0]['profile']['path']}")
    print(f"A flat load at the mean rate would need {trace['mean_rate'] / top_capacity:.1f} replicas of sub-network {top} "
          f"({top_capacity:.0f}/s each within the SLO, {trace['mean_rate'] / top_capacity * trace['duration_s']:.0f} replica-seconds).")
    print()
    print("| policy | attainment | effective accuracy | accuracy of the answers | replica-seconds | mean / peak replicas | fluid bound at mean rate / mean replicas |")
    print("|---|---|---|---|---|---|---|")
    for cell in cells:
        r, b = cell["result"], cell["bound"]
        print(f"| {cell['name']} | {r['attainment']:.1f} % | {r['effective_accuracy']:.1f} % | {r['answer_accuracy']:.1f} % | "
              f"{r['replica_seconds']:.0f} | {r['mean_replicas']:.1f} / {r['peak_replicas']} | {b['accuracy']:.1f} % |")
    print()
    fixed = [c for c in cells if c["policy"] in ("fixed", "static")]
    degrade = [c for c in cells if c["policy"] == "degrade"]
    beaten = 0
    for f in fixed:
        wins = [(d, why) for d in degrade if (why := dominates(d, f)) is not None]
        if wins:
            beaten += 1
            d, why = wins[0]
            print(f"PASS {f['name']}: {d['name']} has {why}")
        else:
            print(f"FAIL {f['name']}: no degrade-then-scale cell reaches its attainment with fewer replica-seconds or a higher effective accuracy with no more")
    return 0 if fixed and degrade and beaten == len(fixed) else 1


def serving_script():
    """``benchmarks/serving.py``, whose server command, readiness wait, loads and tables the measured part reuses."""
    spec = importlib.util.spec_from_file_location("serving", Path(__file__).with_name("serving.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ray_server(serving, run: Path, policy: str, profile: dict, replicas: int, log: Path):
    """``rsvision serve RUN --engine ray`` on ``replicas`` replicas (the serving benchmark's
    :func:`server`, with the profile's SLO, threads and batch sizes): (its URL, its /info) once
    ready; SIGTERM on exit (to the command only: it shuts Serve and its local Ray instance down
    itself, within two minutes)."""
    settings = argparse.Namespace(slo_ms=profile["slo_ms"], threads=profile["threads"], repeats=None,
                                  batch_sizes=",".join(str(b) for b in profile["batch_sizes"]))
    extra = ["--engine", "ray", "--min-replicas", str(replicas), "--max-replicas", str(replicas)]
    return serving.server(run, policy, settings, log, extra, stop_s=120.0)


def measure_cell(args: argparse.Namespace) -> dict:
    """The step load of ``--profile`` against the Ray engine on ``--measure`` replicas (module docstring)."""
    from rsvision.serve.loadgen import read_images, run_load

    serving = serving_script()
    if args.run is None or args.images is None:
        raise UserError("--measure needs --run RUN and --images DIR (benchmarks/serving.py --train writes both)")
    if args.measure < 1:
        raise UserError(f"--measure {args.measure}: expected at least 1 replica")
    profile = serving.read_profile(json.loads(args.profile.read_text()))
    images = read_images(args.images, limit=10**9, seed=profile["seed"])
    load = profile["loads"]["step"]
    log = Path(tempfile.mkdtemp(prefix="rsvision-serving-scale-")) / "serve.log"
    with ray_server(serving, args.run, args.serve_policy, profile, args.measure, log) as (url, info):
        started = time.time()
        result = run_load(url, serving.schedule_of(load, profile["seed"]), images, profile["slo_ms"], seed=profile["seed"],
                          max_requests=10**6, max_in_flight=1024)
        seconds = time.time() - started
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r"^rsvision_replicas (\S+)$", metrics, re.M)
    noun = "replica" if args.measure == 1 else "replicas"
    return {
        "engine": "ray",
        "replicas": args.measure,
        "replicas_seen": float(found.group(1)) if found else None,
        "policy": f"ray {args.serve_policy}, {args.measure} {noun}",
        "load": "step",
        "seconds": seconds,
        "table_ms": info["latency_ms"],
        "profile": {**profile, "latency_ms": {s: {str(b): ms for b, ms in row.items()} for s, row in profile["latency_ms"].items()}},
        "result": result,
    }


def combine_measured(cells: list[dict]) -> int:
    """``benchmarks/serving.py``'s step-load table for the measured cells (their profile must be the same)."""
    serving = serving_script()
    profile = serving.read_profile(cells[0]["profile"])
    if any(c["profile"]["loads"] != cells[0]["profile"]["loads"] for c in cells[1:]):
        raise UserError("--combine-measured: the cells ran different loads (give them the same --profile)")
    cells = sorted(cells, key=lambda c: c["replicas"])
    serving.print_tables(profile, cells)
    print()
    for cell in cells:
        o = cell["result"]["overall"]
        print(f"{cell['policy']}: {o['requests']} requests, attainment {o['attainment']:.1f} %, effective accuracy {o['effective_accuracy']:.1f} %, "
              f"p99 {o['p99_ms'] or 0:.0f} ms, goodput {o['goodput'] or 0:.1f}/s, dropped {o['dropped']}, failed {o['failed']}; "
              f"rsvision_replicas {cell['replicas_seen']}")
    return 0


def tiny(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "mean_rate": 300.0, "duration": 40.0, "startup_s": 5.0, "down_s": 10.0, "max_replicas": 16})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.combine:
            return combine([json.loads(Path(p).read_text()) for p in args.combine])
        if args.combine_measured:
            return combine_measured([json.loads(Path(p).read_text()) for p in args.combine_measured])
        if args.measure is not None:
            cell = measure_cell(args)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(cell, indent=1) + "\n")
            return combine_measured([cell])
        if args.tiny:
            args = tiny(args)
        if args.sweep or args.tiny:
            cells = []
            for policy_name, settings in sweep(args, read_profile(args.profile)):
                cell = run_cell(args, policy_name, settings)
                cells.append(cell)
                if args.sweep:
                    args.sweep.mkdir(parents=True, exist_ok=True)
                    label = "-".join(f"{v:g}" for v in settings.values())
                    (args.sweep / f"{policy_name}-{label}.json").write_text(json.dumps(cell, indent=1) + "\n")
                print(f"{cell['name']}: {cell['seconds']:.1f} s", file=sys.stderr)
            return combine(cells)
        if args.policy is None:
            raise UserError("give --policy fixed|degrade (one cell), --sweep DIR, --combine CELLS or --tiny")
        settings = {"fixed": {"target_ongoing": args.target_ongoing}, "static": {"replicas": args.replicas},
                    "degrade": {"degraded_up": args.degraded_up, "slack": args.slack}}[args.policy]
        cell = run_cell(args, args.policy, settings)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(cell, indent=1) + "\n")
        return combine([cell])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
