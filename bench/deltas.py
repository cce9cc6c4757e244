"""Delta benchmark: the bytes a device downloads for a release that fine-tunes one layer.

Real processes: Mosquitto, an ``edge-controller`` (which chunks each release's model) and one
``edge-agent``; ``edgectl`` releases and deploys. The model is eight 256x256 float32 MatMul
layers (2 MiB); release 1.0.0 is it, release 1.1.0 changes layer 3's weights only. The figures
are the agent's own download counter (``edgefleet_download_bytes_total`` on its ``/metrics``):
``full_bytes`` what the first install moved (the whole model: nothing held yet), ``delta_bytes``
what the one-layer release moved on top. Merges those keys (and ``delta_*`` details) into
``bench/results/distribution.json``, keeping the keys other benchmarks wrote there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from edgefleet.common import chunking  # noqa: E402
from edgefleet.demo.processes import Processes, child_env, script  # noqa: E402
from edgefleet.demo.stack import (  # noqa: E402
    Agent,
    AgentSpec,
    Controller,
    start_agents,
    start_broker,
    start_controller,
)
from tests.deltas.models import LAYERS, mlp  # noqa: E402

RESULTS = HERE / "results" / "distribution.json"
TUNED_LAYER = 3
TARGET_RATIO = 0.25  # one layer of eight, plus the chunks at its edges
EDGECTL = script("edgectl", "edgefleet.edgectl.app")


def edgectl(controller: Controller, *args: str | Path) -> str:
    """Run ``edgectl`` against ``controller``; its stdout (an error names what failed)."""
    env = {**child_env(), "EDGECTL_TOKEN_FILE": str(controller.token_file)}
    argv = [*EDGECTL, "--controller", controller.api, *(str(a) for a in args)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"edgectl {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


def downloaded(agent: Agent) -> int:
    """The agent's ``edgefleet_download_bytes_total``."""
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("edgefleet_download_bytes_total "):
                return int(float(line.split()[1]))
    return 0


def roll_out(controller: Controller, fleet: str, model: bytes, version: str, tmp: Path) -> None:
    """Add ``model``, release it as ``mlp:version`` and deploy it to ``fleet``, waiting."""
    path = tmp / f"mlp-{version}.onnx"
    path.write_bytes(model)
    edgectl(controller, "model", "add", path, "--name", "mlp")
    edgectl(controller, "release", "create", "mlp", "--version", version)
    edgectl(controller, "deploy", f"mlp:{version}", "--fleet", fleet, "--wait", "--timeout", "120")


def measure() -> dict[str, object]:
    base, tuned = mlp(), mlp(tuned_layer=TUNED_LAYER)
    fleet = f"delta-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="ef-delta-") as tmp, Processes(Path(tmp) / "logs") as p:
        root = Path(tmp)
        broker = start_broker(p, root)
        controller = start_controller(p, root / "controller", mqtt_url=broker.url, insecure=True)
        trusted = root / "trusted.pem"
        edgectl(controller, "keys", "init", "--out", trusted)
        (agent,) = start_agents(
            p,
            [AgentSpec(f"{fleet}-1", fleet)],
            workdir=root,
            mqtt_url=broker.url,
            controller=controller.address,
            trusted_key=trusted,
            insecure=True,
        )
        roll_out(controller, fleet, base, "1.0.0", root)
        full = downloaded(agent)
        roll_out(controller, fleet, tuned, "1.1.0", root)
        delta = downloaded(agent) - full
    held = {c.digest for c, _ in chunking.split(base)}
    chunks = [c for c, _ in chunking.split(tuned)]
    return {
        "full_bytes": full,
        "delta_bytes": delta,
        "delta_model": f"{LAYERS} x MatMul 256x256 float32, layer {TUNED_LAYER} fine-tuned",
        "delta_model_bytes": len(tuned),
        "delta_chunks": len(chunks),
        "delta_chunks_fetched": sum(1 for c in chunks if c.digest not in held),
        "delta_ratio": round(delta / full, 4) if full else None,
    }


def merge(figures: dict[str, object]) -> None:
    """Write ``figures`` into the results file, keeping the keys others wrote there."""
    try:
        current = json.loads(RESULTS.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**current, **figures}, indent=2) + "\n")


def main() -> bool:
    figures = measure()
    merge(figures)
    ratio = figures["delta_ratio"]
    ok = isinstance(ratio, float) and 0 < ratio <= TARGET_RATIO
    print(
        f"one-layer release: {figures['delta_bytes']} of {figures['full_bytes']} bytes "
        f"({ratio}; target <= {TARGET_RATIO}) {'PASS' if ok else 'FAIL'}"
    )
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
