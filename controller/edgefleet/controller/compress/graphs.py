"""ONNX graph helpers shared by the passes: parse and check, find weight layers, run in ORT.

The only module of the package that opens ONNX Runtime sessions for the passes (evaluation and
timing have their own). Models travel as bytes between passes, so a pass can never mutate its
caller's model; a pass parses, edits its private copy and serializes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from edgefleet.common.errors import InvalidInputError

log = logging.getLogger(__name__)

Feed = Mapping[str, npt.NDArray[Any]]
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class WeightLayer:
    node: str  # node name (made unique by ``load`` when the model left it empty)
    op: str
    weight: str  # initializer name
    shape: tuple[int, ...]


def load(data: bytes) -> onnx.ModelProto:
    """Parse model bytes; refuse bytes that are no model and models with external data."""
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInputError(f"not an ONNX model: {exc}") from exc
    if not model.graph.node:
        raise InvalidInputError("not an ONNX model: the graph has no nodes")
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    if external:
        files = sorted(
            {
                e.value
                for t in model.graph.initializer
                for e in t.external_data
                if e.key == "location"
            }
        )
        raise InvalidInputError(
            f"model keeps {len(external)} tensors ({', '.join(external[:3])}...) in external data "
            f"files ({', '.join(files)}); load it with load_model_file(path) to inline them"
        )
    for graph in all_graphs(model):
        prefix = "" if graph is model.graph else f"{graph.name}/"
        for i, node in enumerate(graph.node):
            if not node.name:
                node.name = f"{prefix}{node.op_type.lower()}_{i}"
    constants_to_initializers(model)
    return model


def all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, then every If/Loop/Scan body in it (depth first), to edit in place."""
    todo = [model.graph]
    while todo:
        graph = todo.pop(0)
        yield graph
        todo[:0] = list(_subgraphs(graph))


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield a.g
            yield from a.graphs


def constants_to_initializers(model: onnx.ModelProto) -> list[str]:
    """Turn ``Constant`` nodes holding a tensor into initializers, in place (exporters such as
    Paddle's keep every weight in a Constant node, which no pass would see as a weight). In
    If/Loop/Scan bodies too (Silero VAD keeps all its weights there): the tensor becomes an
    initializer of the body that held the node."""
    moved: list[str] = []
    for graph in all_graphs(model):
        keep: list[onnx.NodeProto] = []
        before = len(moved)
        # a body's output stays made by its node (a body returning an initializer is an edge
        # case runtimes have handled differently); the main graph's outputs move as before
        returned = set() if graph is model.graph else {o.name for o in graph.output}
        for node in graph.node:
            value = next((a for a in node.attribute if a.name == "value"), None)
            constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
            if constant and value is not None and node.output[0] not in returned:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value.t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                moved.append(tensor.name)
            else:
                keep.append(node)
        if len(moved) > before:
            del graph.node[:]
            graph.node.extend(keep)
    return moved


def load_model_file(path: Path) -> bytes:
    """Read a model file, inlining tensors kept in external data files beside it."""
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (OSError, DecodeError, ValueError) as exc:
        raise InvalidInputError(f"cannot read model {path}: {exc}") from exc
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:  # pragma: no cover - onnx inlines
            raise InvalidInputError(f"external data of {tensor.name!r} was not found")
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return model.SerializeToString()


def dump(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()


def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def array(tensor: onnx.TensorProto) -> npt.NDArray[Any]:
    return numpy_helper.to_array(tensor)


def replace(model: onnx.ModelProto, name: str, value: npt.NDArray[Any]) -> None:
    """Swap an initializer's value in place (dtype and name kept from ``value``/``name``)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))
            return
    raise KeyError(name)


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def weight_layers(
    model: onnx.ModelProto, *, ops: Sequence[str] = WEIGHT_OPS, subgraphs: bool = False
) -> list[WeightLayer]:
    """Conv/Gemm/MatMul nodes whose weight (input 1) is a float32 initializer of rank >= 2; with
    ``subgraphs`` also those in If/Loop/Scan bodies (weight: an initializer of that body or of
    an enclosing graph). Passes that edit ``model.graph.initializer`` leave ``subgraphs`` off."""
    layers = []
    for graph, inits in _scoped(model.graph, {}, subgraphs):
        for node in graph.node:
            if node.op_type not in ops or len(node.input) < 2 or node.input[1] not in inits:
                continue
            tensor = inits[node.input[1]]
            if tensor.data_type == onnx.TensorProto.FLOAT and len(tensor.dims) >= 2:
                layers.append(WeightLayer(node.name, node.op_type, tensor.name, tuple(tensor.dims)))
    return layers


def _scoped(
    graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], deep: bool
) -> Iterator[tuple[onnx.GraphProto, dict[str, onnx.TensorProto]]]:
    """Each graph with the initializers visible in it (its own over its enclosing graphs')."""
    inits = {**outer, **{t.name: t for t in graph.initializer}}
    yield graph, inits
    if deep:
        for sub in _subgraphs(graph):
            yield from _scoped(sub, inits, deep)


def float_weights(model: onnx.ModelProto) -> int:
    """Bytes of float32 initializers in every graph, If/Loop/Scan bodies included."""
    return sum(
        len(t.raw_data) or 4 * len(t.float_data)
        for g in all_graphs(model)
        for t in g.initializer
        if t.data_type == onnx.TensorProto.FLOAT
    )


def attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def ops(model: onnx.ModelProto) -> set[str]:
    return {
        n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        for n in model.graph.node
    }


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the library chatter of ORT's quantization tools for the duration of a call.

    They log through the root logger, print progress and emit DeprecationWarnings; all are noise
    for our callers (pytest turns warnings into errors). ``matmul_nbits_quantizer`` even calls
    ``logging.basicConfig(level=INFO)`` when imported, so the root logger's level and handlers
    are put back as they were: import such modules inside this block.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def session(model: bytes, *, threads: int = 1) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(
    model: bytes, feeds: Sequence[Feed], *, outputs: Sequence[str] | None = None
) -> list[list[npt.NDArray[Any]]]:
    sess = session(model)
    return [list(sess.run(list(outputs) if outputs else None, dict(feed))) for feed in feeds]


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    """A copy of the model that also returns the named intermediate tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in names:
        if name not in present:
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
    return copy.SerializeToString()


def check_runs(data: bytes, technique: str, feeds: Sequence[Feed] = ()) -> None:
    """A pass's output must load (and run on ``feeds``) in ONNX Runtime's CPU provider."""
    from .errors import PassSkippedError

    try:
        sess = session(data)
        for feed in feeds[:1]:
            sess.run(None, dict(feed))
    except Exception as exc:  # ORT raises its own unexported exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PassSkippedError(technique, f"ONNX Runtime cannot run the result: {first}") from exc


def toposort(model: onnx.ModelProto) -> None:
    """Order every graph's nodes (subgraphs too) so each comes after what it reads, in place.

    Converters that append nodes (ORT's fp16 tool adds its Casts at the end) leave graphs that
    ONNX Runtime runs but ``onnx.checker`` refuses ("Nodes in a graph must be topologically
    sorted"). Stable: nodes already in order keep it. A cycle raises ``InvalidInputError``.
    """
    _sort_graph(model.graph, set())


def _sort_graph(graph: onnx.GraphProto, outer: set[str]) -> None:
    known = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer} | {""}
    pending = list(graph.node)
    done: list[onnx.NodeProto] = []
    while pending:
        left: list[onnx.NodeProto] = []
        for node in pending:
            if all(name in known for name in _reads(node)):
                done.append(node)
                known.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            missing = sorted({n for node in left for n in _reads(node) if n not in known})
            raise InvalidInputError(
                f"graph {graph.name!r} cannot be ordered: {left[0].name} reads {missing[:3]}"
            )
        pending = left
    for node in done:
        for a in node.attribute:
            subgraphs = [a.g] if a.HasField("g") else list(a.graphs)
            for sub in subgraphs:
                _sort_graph(sub, known)
    del graph.node[:]
    graph.node.extend(done)


def _reads(node: onnx.NodeProto) -> set[str]:
    """What a node reads: its inputs and the outer-scope names its subgraphs use."""
    names = set(node.input)
    for a in node.attribute:
        for sub in [a.g] if a.HasField("g") else list(a.graphs):
            made = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for n in sub.node:
                made.update(n.output)
            names |= {x for n in sub.node for x in _reads(n)} - made
    return names


def validate_model(data: bytes, feeds: Sequence[Feed] = ()) -> None:
    """What a model must pass before it can be registered: ``onnx.checker``, a load in ONNX
    Runtime's CPU provider and a run on the first feed. ``InvalidInputError`` says what failed."""
    try:
        onnx.checker.check_model(onnx.load_model_from_string(data))
    except (onnx.checker.ValidationError, DecodeError, ValueError) as exc:
        raise InvalidInputError(f"onnx.checker refuses it: {_first_line(exc)}") from exc
    try:
        sess = session(data)
        for feed in feeds[:1]:
            sess.run(None, dict(feed))
    except Exception as exc:  # ORT raises its own unexported exception types
        raise InvalidInputError(f"ONNX Runtime cannot run it: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def subgraph_note(model: onnx.ModelProto) -> str:
    """ "" or why a pass found nothing: the weights live in If/Loop/Scan subgraphs, which the
    passes leave in float (they work on the main graph)."""
    held = subgraph_ops(model)
    if not held:
        return ""
    return f"; its weights are inside {'/'.join(held)} subgraphs, left in float"


def subgraph_ops(model: onnx.ModelProto) -> list[str]:
    """The ops (If, Loop, Scan) of the main graph that hold subgraphs."""
    return sorted(
        {
            node.op_type
            for node in model.graph.node
            for a in node.attribute
            if a.HasField("g") or len(a.graphs)
        }
    )
