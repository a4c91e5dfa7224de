"""What `tidewater up` prints at the end: what came out of the output topics."""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

from tidewater.errors import UserError
from tidewater.settings import Settings


def worker_stats(web_port: int, read_token: str = "") -> dict[str, Any] | None:
    """The worker's GET /stats, with the read token if one is set (without it, a worker behind
    TIDEWATER_READ_TOKEN answered 401, and `up` waited its whole timeout; found by review)."""
    headers = {"Authorization": f"Bearer {read_token}"} if read_token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{web_port}/stats", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise UserError("the worker refused GET /stats (401): TIDEWATER_READ_TOKEN differs between `up` and "
                            "the worker") from None
        return None
    except (OSError, ValueError):
        return None


def wait_until_processed(web_port: int, total: int, proc: Any = None, timeout_s: float = 900.0,
                         read_token: str = "") -> None:
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    bar = tqdm(total=total, desc="processed", unit="ev")
    done = 0
    try:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise UserError(f"the worker exited with code {proc.returncode}")
            stats = worker_stats(web_port, read_token)
            if stats is not None:
                bar.update(stats["processed"] - done)
                done = stats["processed"]
                if done >= total:
                    return
            time.sleep(0.5)
        raise UserError(f"the worker processed {done} of {total} events in {timeout_s:.0f} s")
    finally:
        bar.close()


def print_summary(s: Settings) -> dict[str, int]:
    from streams.replay import read_topic

    counts: dict[str, int] = {}
    for topic in (*s.output_topics, s.topic_dead_letter):
        rows = asyncio.run(read_topic(s, topic, idle_s=1.5))
        counts[topic] = len(rows)
        print(f"\n== {topic}: {len(rows)} events")
        if not rows:
            continue
        values = [json.loads(r[3]) for r in rows]
        if topic == s.topic_churn_scores:
            triggers = Counter(v["trigger"] for v in values)
            scores = sorted(v["score"] for v in values)
            print(f"   triggers {dict(triggers)}; score p50 {scores[len(scores)//2]:.3f}; "
                  f"model {values[0]['model_version']}")
        elif topic == s.topic_offers:
            reasons = Counter(code for v in values for code in v["reason_codes"])
            print(f"   offer types {dict(Counter(v['offer_type'] for v in values))}; reasons {dict(reasons)}")
        elif topic == s.topic_recommendations:
            versions = Counter((v["model_version"], v["index_version"]) for v in values)
            print(f"   triggers {dict(Counter(v['trigger'] for v in values))}; "
                  f"segments {dict(sorted(Counter(v['segment'] for v in values).items(), key=str))}; "
                  f"model/index {dict(versions)}")
        # an example that shows the model at work (a scored recommendation, an offer with items) if there is one
        example = next((v for v in reversed(values) if any(i.get("score") for i in v.get("items", []))), values[-1])
        print("   e.g. " + json.dumps(example)[:400])
    return counts
