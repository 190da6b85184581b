"""Load on `rlhfkit serve-rm`: requests/s, latency and failures, with and without dynamic
batching.

    .venv/bin/python bench/serve_rm.py                       # tiny and small, ~5 min
    .venv/bin/python bench/serve_rm.py --presets tiny --rounds 1 --requests 10   # quick

Per preset (`models/presets.py`; a random-head reward model on a tokenizer trained on the
built-in world's prompts), two server processes (`rlhfkit serve-rm DIR`, one torch thread
each) run side by side, one with dynamic batching, one with `--no-batching`, and the load
goes to each in turn, `--rounds` times, the order alternating (on a shared machine the
load of the others drifts; the printed figures are the medians over rounds, every round's
row is printed too). Per load, `--clients` threads send
`--requests` requests each, all at once, every request `--items` world prompts with a
response (about 40 tokens per sequence) to POST /score, and wait for each answer before
the next (closed loop, like an RL loop that scores as it samples). Reported: requests/s
and items/s over the wall time of the whole load, the p50 / p99 latency of one request,
failures (any answer other than 200 with one score per item), and the mean batch the
server formed (its GET /health counts, warm-up included). One warm-up request per client
is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx


def make_rm(preset: str, folder: Path, texts: list[str]) -> Path:
    from rlhfkit.models.presets import build_model, train_tokenizer
    from rlhfkit.models.reward import init_reward_model

    tok = train_tokenizer(texts, vocab_size=2048)
    rm, rm_tok = init_reward_model(
        build_model(preset, tok, seed=0), tok, head_init="normal", seed=0
    )
    rm.save_pretrained(folder)
    rm_tok.save_pretrained(folder)
    return folder


def world_items(n: int, seed: int = 0) -> list[dict[str, str]]:
    from rlhfkit.world.generate import WorldSettings, make_prompts

    made = make_prompts(n, WorldSettings(), random.Random(seed), set(), unique=False)
    return [{"prompt": q, "response": f"The answer to {name} is {i % 97}, as asked."}
            for i, (name, q, _) in enumerate(made)]  # fmt: skip


def start_server(folder: Path, batching: bool) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_THREADS": "1"}
    cmd = [sys.executable, "-m", "rlhfkit.cli", "serve-rm", str(folder), "--port", "0",
           "--batching" if batching else "--no-batching"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        if line.startswith("serve-rm:") and " on http://" in line:
            return proc, "http://" + line.split(" on http://")[1].split(" ")[0]
    raise RuntimeError(f"serve-rm did not start (exit {proc.wait()})")


def load(url: str, items: list[dict], clients: int, requests: int, per: int) -> dict:
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        rng = random.Random(c)
        with httpx.Client(base_url=url, timeout=120) as http:
            http.post("/score", json={"items": rng.sample(items, per)})  # warm-up
            start.wait()
            for _ in range(requests):
                body = {"items": rng.sample(items, per)}
                t0 = time.perf_counter()
                try:
                    r = http.post("/score", json=body)
                    ok = r.status_code == 200 and len(r.json()["scores"]) == per
                except httpx.HTTPError:
                    ok = False
                with lock:
                    latencies.append(time.perf_counter() - t0)
                    failures[0] += not ok

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stats = httpx.get(url + "/health").json()["stats"]
    q = statistics.quantiles(latencies, n=100)
    return {"requests_per_s": round(len(latencies) / wall, 1),
            "items_per_s": round(len(latencies) * per / wall, 1),
            "p50_ms": round(q[49] * 1000, 1), "p99_ms": round(q[98] * 1000, 1),
            "failures": failures[0], "requests": len(latencies),
            "mean_batch": stats["mean_batch"], "wall_s": round(wall, 1)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20, help="per client")
    ap.add_argument("--rounds", type=int, default=2, help="loads per server, alternating")
    ap.add_argument("--items", type=int, default=4, help="per request")
    ap.add_argument("--json", default=None, help="write the rows here too")
    args = ap.parse_args()

    items = world_items(400)
    texts = [it["prompt"] + " " + it["response"] for it in items]
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            folder = make_rm(preset, Path(tmp) / preset, texts)
            servers = {b: start_server(folder, b) for b in (True, False)}
            runs: dict[bool, list[dict]] = {True: [], False: []}
            try:
                for r in range(args.rounds):
                    for batching in (True, False) if r % 2 == 0 else (False, True):
                        url = servers[batching][1]
                        row = {"preset": preset, "batching": batching, "round": r,
                               **load(url, items, args.clients, args.requests, args.items)}  # fmt: skip
                        runs[batching].append(row)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
            finally:
                for proc, _ in servers.values():
                    proc.kill()
                    proc.wait()
            for batching in (True, False):
                keys = ("requests_per_s", "items_per_s", "p50_ms", "p99_ms")
                med = {k: round(statistics.median(r[k] for r in runs[batching]), 1) for k in keys}
                fails = sum(r["failures"] for r in runs[batching])
                total = sum(r["requests"] for r in runs[batching])
                table.append({"preset": preset, "batching": batching, **med,
                              "failures": f"{fails}/{total}",
                              "mean_batch": runs[batching][-1]["mean_batch"]})  # fmt: skip
    print(f"\n{args.clients} clients x {args.requests} requests x {args.items} items, "
          f"{args.rounds} rounds (medians), 1 torch thread per server, "
          f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("| preset | batching | requests/s | items/s | p50 ms | p99 ms | failures | mean batch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['preset']} | {'on' if r['batching'] else 'off'} | {r['requests_per_s']} | "
              f"{r['items_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['failures']} | "
              f"{r['mean_batch']} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
