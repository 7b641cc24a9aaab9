"""Compressing a model for an edge device: int8 quantization and pruning.

Three ways to make the same network smaller or faster, each with its own catch:

- **Quantization** stores weights (and, *statically*, activations too) as 8-bit integers:
  a quarter of the bytes, and integer kernels where the runtime has them. *Dynamic*
  quantization measures each activation's range at run time, per call; *static*
  quantization fixes the ranges beforehand from a **calibration set**, so the runtime can
  fuse whole int8 conv chains. ONNX Runtime does both (``quantize_dynamic_onnx``,
  ``quantize_static_onnx``); in PyTorch, torchao (``quantize_torchao``) is the maintained
  successor of ``torch.ao.quantization``.
- **Unstructured pruning** zeroes the smallest weights anywhere (``prune_unstructured``):
  the file compresses better, but a dense kernel multiplies the zeros all the same.
- **Structured pruning** removes whole filters (``prune_channels``): a smaller dense
  network, which is faster, and loses more accuracy until it is fine-tuned
  (``fine_tune``).

Knowledge distillation, the fourth technique, trains a new small network:
``helpers.distillation``. Measuring them all alike: ``helpers.edge_measure``.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .device import quiet_torchao_logs
from .wafermaps import WaferMapCNN

__all__ = ["int8_weight_format", "quantize_dynamic_onnx", "quantize_static_onnx", "TORCHAO_CONFIGS",
           "quantize_torchao", "prune_unstructured", "sparsity", "prune_channels",
           "fine_tune"]


# -- ONNX Runtime: int8 ------------------------------------------------------------------
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def int8_weight_format() -> tuple[str, str]:
    """``("int8" | "uint8", why)``: the weight type that is exact on this CPU.

    On x86 without VNNI (AVX2, AVX-512 without VNNI), ONNX Runtime multiplies uint8
    activations by int8 weights with VPMADDUBSW, which adds pairs of products into 16 bits
    and saturates: large activations lose accuracy. ONNX Runtime's documentation advises
    uint8 weights there (its U8U8 kernels widen to 16 bits first: exact, but slower). VNNI's
    dot product accumulates in 32 bits, and ARM's kernels do not saturate: int8 weights.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "int8", f"{platform.machine()} CPU: int8 weights"
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:  # not Linux: no flags to read; uint8 is exact everywhere, only slower
        return "uint8", "x86 CPU whose flags this cannot read: uint8 weights, exact on any x86"
    if flags & _VNNI_FLAGS:
        return "int8", "x86 with VNNI: int8 weights, 32-bit int8 dot products"
    return "uint8", ("x86 without VNNI: uint8 weights, since int8 weights would go through "
                     "VPMADDUBSW, whose 16-bit sums saturate")


def _preprocessed(src: Path, workdir: Path) -> Path:
    """Shape inference and graph clean-up, what ONNX Runtime asks for before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "preprocessed.onnx"
    quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
    return out


def _weight_quant_type(weight_type: str):
    from onnxruntime.quantization import QuantType

    weight_type = int8_weight_format()[0] if weight_type == "auto" else weight_type
    if weight_type not in ("int8", "uint8"):
        raise ValueError(f"weight_type is 'int8', 'uint8' or 'auto', got {weight_type!r}")
    return QuantType.QInt8 if weight_type == "int8" else QuantType.QUInt8


@functools.lru_cache(maxsize=8)
def _node_names(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """A graph's node names, read once per version of the file (MiniLM's is 91 MB)."""
    import onnx

    return frozenset(node.name for node in onnx.load(path, load_external_data=False).graph.node)


def _refuse_unknown_nodes(graph_path: Path, names: Iterable[str]) -> list[str]:
    """``names`` as a list, after checking that each one is a node of the graph.

    ONNX Runtime silently ignores a name it does not find, which would quantize a node
    the caller meant to keep in float32: a typo, or a name from another graph.
    """
    names = list(names)
    if not names:
        return names
    stat = graph_path.stat()
    nodes = _node_names(str(graph_path.resolve()), stat.st_mtime_ns, stat.st_size)
    unknown = [name for name in names if name not in nodes]
    if unknown:
        raise ValueError(f"not nodes of {graph_path.name}: {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
                         + f"; its nodes include {sorted(nodes)[:5]}")
    return names


def quantize_dynamic_onnx(src: str | Path, dst: str | Path, exclude: Iterable[str] = (),
                          per_channel: bool = False, op_types: Iterable[str] | None = None,
                          weight_type: str = "int8") -> Path:
    """int8 weights; activations quantized per call from their observed range.

    ``exclude`` names nodes (``helpers.onnx_models.matmul_nodes`` lists the MatMuls) that
    stay in float32; ``per_channel`` gives every output channel its own weight scale.
    ``op_types`` limits which kinds of node are quantized: by default every kind ONNX
    Runtime can, which includes ``Gather``, the lookup into an embedding table.
    ``weight_type``: ``"int8"``, ``"uint8"`` or ``"auto"`` (see ``int8_weight_format``).
    """
    from onnxruntime.quantization import quantize_dynamic

    # No pre-processing here: it renames nodes, and ``exclude`` names the exported ones.
    exclude = _refuse_unknown_nodes(Path(src), exclude)
    weight_type = _weight_quant_type(weight_type)
    # ONNX Runtime logs a reminder to pre-process on the root logger: hush it.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # ONNX Runtime writes its shape-inferred copy beside the graph it is given, as
        # <name>-inferred.onnx, and deletes it: two quantizations of one graph at once (two
        # notebooks) would delete each other's. A link in a private folder keeps it private.
        with tempfile.TemporaryDirectory(prefix="quantize-") as workdir:
            private = Path(workdir) / Path(src).name
            private.symlink_to(Path(src).resolve())
            quantize_dynamic(str(private), str(dst), weight_type=weight_type,
                             per_channel=per_channel, nodes_to_exclude=exclude,
                             op_types_to_quantize=list(op_types) if op_types is not None else None)
    finally:
        root.setLevel(level)
    return Path(dst)


def quantize_static_onnx(src: str | Path, dst: str | Path, calibration: np.ndarray,
                         input_name: str = "wafer_map", exclude: Iterable[str] = (),
                         per_channel: bool = False, batch_size: int = 32,
                         weight_type: str = "auto") -> Path:
    """8-bit weights and activations; activation ranges fixed from ``calibration``.

    The calibration batches are run through the float graph once and each tensor's
    min/max recorded: inputs that do not look like production traffic give ranges that
    clip real activations (or waste the 256 levels on values that never occur).
    ``exclude`` names nodes of the graph after ONNX Runtime's pre-processing, which renames
    some: a name that is not there is refused rather than silently quantized.
    ``weight_type``: ``"int8"``, ``"uint8"``, or ``"auto"``, what ``int8_weight_format``
    finds exact on this CPU.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    weight_type = _weight_quant_type(weight_type)
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if len(calibration) == 0:
        raise ValueError("static quantization needs at least one calibration input")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{input_name: calibration[i:i + batch_size]}
                                  for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as workdir:
        graph = _preprocessed(Path(src), Path(workdir))
        # Pre-processing renames some nodes: ``exclude`` must name the pre-processed ones.
        exclude = _refuse_unknown_nodes(graph, exclude)
        # QDQ: quantize/dequantize pairs around each op, which ONNX Runtime fuses into
        # 8-bit kernels; activations unsigned (after ReLU they are >= 0).
        quantize_static(str(graph), str(dst), Batches(),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=weight_type,
                        per_channel=per_channel, nodes_to_exclude=exclude)
    return Path(dst)


# -- PyTorch: torchao ---------------------------------------------------------------------
# Config names -> how torchao spells them; what runs depends on the device and the build.
TORCHAO_CONFIGS = {
    "int8 weight-only": "Int8WeightOnlyConfig",
    "int8 dynamic": "Int8DynamicActivationInt8WeightConfig",
}


def quantize_torchao(module: nn.Module, config: str,
                     example: torch.Tensor) -> tuple[nn.Module | None, str]:
    """A quantized copy of ``module`` under a torchao config, or ``(None, why not)``.

    torchao quantizes ``nn.Linear`` layers (convolutions stay float32). A config whose
    kernels this CPU or build lacks fails on the first call, not on ``quantize_``: the
    example is run here so the failure is reported, not met later in a timing loop.
    """
    import copy

    quiet_torchao_logs()
    try:
        import torchao.quantization as tq
    except ImportError as exc:
        return None, f"torchao is not installed ({exc})"
    if config not in TORCHAO_CONFIGS:
        raise ValueError(f"unknown torchao config {config!r}; known: {list(TORCHAO_CONFIGS)}")
    quantized = copy.deepcopy(module).eval()
    try:
        tq.quantize_(quantized, getattr(tq, TORCHAO_CONFIGS[config])())
        with torch.inference_mode():
            quantized(example)
    except Exception as exc:  # a kernel this device lacks
        return None, f"torchao {config} does not run here ({type(exc).__name__}: " \
                     f"{str(exc).splitlines()[0][:160]})"
    return quantized, f"torchao {config}: Linear layers int8, convolutions float32"


# -- pruning ------------------------------------------------------------------------------
def _weighted_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prune_unstructured(module: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` smallest-magnitude weights across all conv and linear layers.

    One global threshold (not per layer), so layers with many small weights lose more.
    The zeros are written into the weights (no masks left behind); ``fine_tune`` keeps
    them zero.
    """
    import copy

    from torch.nn.utils import prune

    if not 0.0 <= amount < 1.0:
        raise ValueError(f"amount is the share of weights to zero, in [0, 1); got {amount}")
    pruned = copy.deepcopy(module)
    layers = [(m, "weight") for m in _weighted_layers(pruned)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=amount)
    for m, name in layers:
        prune.remove(m, name)
    return pruned


def sparsity(module: nn.Module) -> float:
    """The share of conv and linear weights that are exactly zero."""
    weights = [m.weight for m in _weighted_layers(module)]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def prune_channels(cnn: WaferMapCNN, keep: float) -> WaferMapCNN:
    """A narrower ``WaferMapCNN``: each conv keeps its ``keep`` share of filters, those with
    the largest L1 norm, and the next layer keeps the matching input channels.

    The result is a smaller dense network (fewer multiply-adds, so faster), before any
    fine-tuning.
    """
    channels = max(1, round(cnn.channels * keep))
    narrow = WaferMapCNN(cnn.size, channels, cnn.n_classes)
    old = [m for m in cnn.features.modules() if isinstance(m, nn.Conv2d)]
    new = [m for m in narrow.features.modules() if isinstance(m, nn.Conv2d)]
    kept_in = torch.arange(1)  # the single input channel (the map)
    with torch.no_grad():
        for src, dst in zip(old, new, strict=True):
            norms = src.weight.abs().sum(dim=(1, 2, 3))          # (C_out,)
            kept_out = norms.argsort(descending=True)[:dst.out_channels].sort().values
            dst.weight.copy_(src.weight[kept_out][:, kept_in])  # (C_out', C_in', 3, 3)
            dst.bias.copy_(src.bias[kept_out])
            kept_in = kept_out
        head_old, head_new = cnn.head[-1], narrow.head[-1]
        head_new.weight.copy_(head_old.weight[:, kept_in])       # (n_classes, C')
        head_new.bias.copy_(head_old.bias)
    return narrow.eval()


def fine_tune(module: nn.Module, maps: np.ndarray, labels: np.ndarray, epochs: int = 1,
              lr: float = 5e-4, batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Train on ``maps`` a little more; weights that are zero stay zero (pruning kept).

    Returns the module in eval mode. A small learning rate: the network is already good,
    and the point is to recover what pruning cost, not to retrain it.
    """
    torch.manual_seed(seed)
    x, y = torch.from_numpy(np.asarray(maps, np.float32)), torch.from_numpy(np.asarray(labels))
    zero = {id(m): (m.weight == 0) for m in _weighted_layers(module)}
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(module(x[idx]), y[idx]).backward()
            optimiser.step()
            with torch.no_grad():  # keep the pruned weights pruned
                for m in _weighted_layers(module):
                    m.weight.masked_fill_(zero[id(m)], 0.0)
    return module.eval()
