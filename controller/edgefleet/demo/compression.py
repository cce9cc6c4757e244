"""The demo's compression step: ``model compress --recipe auto`` through the controller's API.

The same ``CompressModel`` call ``edgectl model compress`` makes, with a time budget and a small
eval set (the first test digits with their labels, so the gate is accuracy), and the same report
table. The winner's own accuracy on the eval set comes back with the result; the demo later
checks each device scores exactly that through Predict.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.markup import escape

from edgefleet.demo import digits
from edgefleet.demo.errors import DemoFailed
from edgefleet.edgectl import models
from edgefleet.edgectl.client import COMPRESS_DEADLINE_S, ControllerClient
from edgefleet.v1 import controller_pb2 as pb

EVAL_SAMPLES = 200
MAX_DROP = 1.0  # points of accuracy the winner may lose
OBJECTIVE = "size"  # on a model this small, timing noise decides "not slower", not the model


@dataclass(frozen=True)
class Compressed:
    result: pb.CompressResult
    winner: pb.CompressCandidate
    eval_x: np.ndarray
    eval_y: np.ndarray
    max_drop: float

    @property
    def model(self) -> pb.RegisteredModel:
        return self.result.model


def eval_npz(data: digits.DigitsData, *, samples: int = EVAL_SAMPLES) -> bytes:
    """``pixels`` and ``labels``: the first ``samples`` held-out digits."""
    buf = io.BytesIO()
    np.savez_compressed(buf, pixels=data.x_test[:samples], labels=data.y_test[:samples])
    return buf.getvalue()


def compress(
    client: ControllerClient,
    console: Console,
    *,
    name: str,
    data: digits.DigitsData,
    time_budget_s: float,
    max_drop: float = MAX_DROP,
    samples: int = EVAL_SAMPLES,
) -> Compressed:
    """Run the search on the newest version of ``name``; ``DemoFailed`` without a winner."""
    result: pb.CompressResult | None = None
    with console.status(f"compressing {name}: starting") as status:
        for msg in client.compress_model(
            name,
            eval_data=eval_npz(data, samples=samples),
            recipe="auto",
            max_accuracy_drop=max_drop,
            objective=OBJECTIVE,
            deadline_s=max(COMPRESS_DEADLINE_S, 2 * time_budget_s + 300),
            time_budget_s=time_budget_s,
        ):
            kind = msg.WhichOneof("update")
            if kind == "message":
                status.update(f"compressing {name}: {escape(msg.message)}")
            elif kind == "candidate":
                c = msg.candidate
                mark = "[green]pass[/]" if c.passed_gate else "[red]fail[/]"
                console.print(
                    f"  {mark} {escape(c.candidate)} ({c.seconds:.1f} s): {escape(c.verdict)}"
                )
                status.update(
                    f"compressing {name}: {msg.done}/{msg.total or '?'} candidates, "
                    f"about {msg.remaining_s:.0f} s left"
                )
            elif kind == "result":
                result = msg.result
    if result is None:
        raise DemoFailed("the controller ended the compression without a result")
    models._print_result(result, max_drop=max_drop)  # the table `edgectl model compress` prints
    if not result.passed:
        raise DemoFailed(
            f"no compression candidate passed the gate (at most {max_drop:g} points of "
            "accuracy lost): nothing to release"
        )
    winner = next(c for c in result.candidates if c.candidate == result.winner)
    if math.isnan(winner.drop) or winner.drop > max_drop:
        raise DemoFailed(f"the winner {result.winner} lost {winner.drop} points, over {max_drop}")
    return Compressed(
        result, winner, data.x_test[:samples], data.y_test[:samples], max_drop=max_drop
    )


def why(c: Compressed) -> str:
    """One line: what the winner saves and what it costs, as the gate measured it."""
    original, w = c.result.original, c.winner
    sent, was = w.transfer_bytes or w.size_bytes, original.transfer_bytes or original.size_bytes
    saved = 1.0 - sent / was if was else 0.0
    return (
        f"{c.result.winner}: {saved:.0%} less to send ({was:,} -> {sent:,} bytes), "
        f"{w.metric} {w.value:.4f} vs {original.value:.4f} (drop {w.drop:.2f} points, "
        f"gate {c.max_drop:g})"
    )
