"""ONNX export and ONNX Runtime: the course's models as graphs a C++ runtime executes.

Production serving often runs a model outside PyTorch: the graph is exported once to
ONNX, and ONNX Runtime (or TensorRT, or OpenVINO) runs it with fused kernels and no
Python between the layers. Triton serves such models under the platform name
``onnxruntime_onnx``; so does our server (the loader registered here).

- ``export_onnx`` uses the exporter current PyTorch recommends (``torch.export`` under
  ``torch.onnx.export(..., dynamo=True)``), names every node after the module it came
  from (``encoder.layer.3.output.dense/MatMul``: what a per-layer quantization decision
  refers to), and checks the graph's outputs against PyTorch's at two batch sizes.
- ``ort_session`` opens a model with a fixed number of threads, so timings compare.
- ``export_course_models`` (run by ``make data``) exports the wafer-map CNN and the
  note embedder into ``data/onnx/``; lesson 08 compresses those files.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .embedder import mean_pool
from .repository import (
    LoadContext,
    LoadedModel,
    ModelFormatError,
    TensorSpec,
    register_platform,
    write_version,
)
from .settings import data_dir

__all__ = ["ONNX_PLATFORM", "onnx_dir", "export_onnx", "ort_session", "ProbabilitiesOf",
           "SentenceEmbedding", "save_onnx_model", "export_course_models", "matmul_nodes"]

ONNX_PLATFORM = "onnxruntime_onnx"  # Triton's name for the same thing
ONNX_FILE = "model.onnx"


def onnx_dir() -> Path:
    """Where ``make data`` puts the exported graphs (not a model repository)."""
    return data_dir() / "onnx"


class ProbabilitiesOf(torch.nn.Module):
    """A course classifier whose graph ends in its probabilities, as the server returns."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, wafer_map: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(wafer_map)  # (B, 1, S, S) -> (B, n_classes)


class SentenceEmbedding(torch.nn.Module):
    """MiniLM with the embedder's pooling inside the graph: ids and mask -> unit vectors."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids,
                              attention_mask=attention_mask).last_hidden_state  # (B, T, C)
        return mean_pool(hidden, attention_mask)  # (B, C)


def ort_session(path: str | Path, threads: int = 1, device: Any = None):
    """An ONNX Runtime session on ``threads`` intra-op threads (one inter-op thread).

    ONNX Runtime would otherwise take every core, and a comparison with PyTorch on a
    fixed thread count would compare thread counts, not runtimes. On a CUDA device the
    CUDA provider runs the graph where the installed ONNX Runtime has it
    (``onnxruntime-gpu``); the CPU package runs on the CPU, and says so in ``providers``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if torch.device(device or "cpu").type == "cuda" and \
            "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), options, providers=providers)


def _name_nodes_by_module(model) -> None:
    """Rename each node ``<module path>/<op>[_n]`` from the exporter's name scopes."""
    used: dict[str, int] = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
        # scopes: ['', 'model', 'model.features', 'model.features.0', ..., 'conv2d']; the
        # last is the op, the one before it the module; the wrapper's own name goes.
        module = scopes[-2].split(".", 1)[-1] if len(scopes) >= 3 else "graph"
        base = f"{module}/{node.op_type}"
        used[base] = used.get(base, 0) + 1
        node.name = base if used[base] == 1 else f"{base}_{used[base] - 1}"


def export_onnx(module: torch.nn.Module, examples: tuple[torch.Tensor, ...], path: str | Path,
                input_names: list[str], output_names: list[str],
                dynamic: list[dict[int, str]], check_examples: tuple[torch.Tensor, ...] = (),
                atol: float = 1e-4) -> Path:
    """Export ``module`` called on ``examples`` to one ``.onnx`` file at ``path``.

    ``dynamic[i]`` names the variable dimensions of input ``i`` (``{0: "batch"}``). The
    graph is checked against PyTorch on ``examples`` and on ``check_examples`` (give a
    different batch size: a dimension baked in as a constant shows up there), and the
    export is refused if any output differs by more than ``atol``.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    dims = {name: torch.export.Dim(name, min=1, max=4096) for d in dynamic for name in d.values()}
    shapes = tuple({axis: dims[name] for axis, name in d.items()} for d in dynamic)
    program = torch.onnx.export(module, examples, dynamo=True, verbose=False,
                                input_names=input_names, output_names=output_names,
                                dynamic_shapes=shapes)
    graph = program.model_proto
    _name_nodes_by_module(graph)
    partial = path.with_suffix(".partial")
    onnx.save(graph, str(partial))
    session = ort_session(partial)
    for inputs in (examples, check_examples):
        if not inputs:
            continue
        with torch.inference_mode():
            expected = module(*inputs)
        got = session.run(None, {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)})
        error = float(np.abs(got[0] - expected.numpy()).max())
        if error > atol:
            partial.unlink()
            raise ValueError(f"the ONNX graph differs from PyTorch by {error:.2e} > {atol} on "
                             f"inputs of shape {[tuple(t.shape) for t in inputs]}")
    partial.replace(path)
    return path


def matmul_nodes(path: str | Path) -> list[str]:
    """The names of the graph's MatMul nodes with a weight (what dynamic int8 quantizes)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    return [node.name for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(i in weights for i in node.input)]


# -- the repository's ONNX platform --------------------------------------------------------
def save_onnx_model(onnx_file: str | Path, name: str, version: int,
                    repository: str | Path | None, inputs: list[TensorSpec],
                    outputs: list[TensorSpec], feature_names: list[str] | None = None,
                    training: dict | None = None) -> Path:
    """Put an ``.onnx`` file into the repository as ``name``/``version`` (a copy, hashed)."""
    import shutil

    source = Path(onnx_file)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}")
    return write_version(repository, name, version, ONNX_PLATFORM, ONNX_FILE,
                         lambda path: shutil.copyfile(source, path), inputs=inputs,
                         outputs=outputs, feature_names=feature_names or [],
                         architecture={"format": "onnx", "source": source.name},
                         training=training or {})


def _load_onnx(context: LoadContext) -> LoadedModel:
    """Serve a one-input, one-output ONNX graph (the CNN and its compressed versions)."""
    weights = context.weights()
    threads = max(1, torch.get_num_threads())  # what the server gave this worker
    try:
        session = ort_session(weights, threads=threads, device=context.device)
    except Exception as exc:  # not ONNX, or an op this runtime lacks
        raise ModelFormatError(f"{context.label(weights)} is not an ONNX graph ONNX Runtime can "
                               f"run ({type(exc).__name__}: {str(exc)[:200]})") from None
    graph_inputs = [i.name for i in session.get_inputs()]
    want = context.config.inputs[0].name
    if graph_inputs != [want]:
        raise ModelFormatError(f"{context.label(weights)} takes inputs {graph_inputs}; its "
                               f"config.json says [{want!r}]")

    def predict(x: np.ndarray) -> np.ndarray:
        return session.run(None, {want: np.ascontiguousarray(x, dtype=np.float32)})[0]

    on = "cuda" if session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
    return LoadedModel(context.config, predict, torch.device(on))


register_platform(ONNX_PLATFORM, _load_onnx)


# -- make data ------------------------------------------------------------------------------
def export_course_models(repository: str | Path | None = None, force: bool = False,
                         progress=None) -> dict[str, Path]:
    """Export ``wafer-cnn`` v1 and the note embedder into ``data/onnx/`` (skips what exists)."""
    from .embedder import NoteEmbedder, pad_to_longest
    from .repository import load_model
    from .wafermaps import make_wafer_maps

    out = onnx_dir()
    written = {}
    cnn_file = out / "wafer-cnn.onnx"
    if force or not cnn_file.is_file():
        if progress:
            progress("exporting wafer-cnn to ONNX ...")
        cnn = load_model("wafer-cnn", 1, repository, device="cpu").module
        maps, _ = make_wafer_maps(5, seed=1)
        export_onnx(ProbabilitiesOf(cnn), (torch.from_numpy(maps[:2]),), cnn_file,
                    ["wafer_map"], ["class_probabilities"], [{0: "batch"}],
                    check_examples=(torch.from_numpy(maps),))
    written["wafer-cnn"] = cnn_file
    embedder_file = out / "note-embedder.onnx"
    if force or not embedder_file.is_file():
        if progress:
            progress("exporting note-embedder to ONNX ...")
        embedder = NoteEmbedder("cpu")
        short = embedder.token_ids(["ok", "pump vibration rising", "PM done"])
        long = embedder.token_ids(["particle counts doubled during the gas line purge"] * 5)

        def tensors(sequences):
            ids, mask = pad_to_longest(sequences, embedder.tokenizer.pad_token_id)
            return torch.tensor(ids), torch.tensor(mask)

        export_onnx(SentenceEmbedding(embedder.model), tensors(short), embedder_file,
                    ["input_ids", "attention_mask"], ["sentence_embedding"],
                    [{0: "batch", 1: "tokens"}, {0: "batch", 1: "tokens"}],
                    check_examples=tensors(long))
    written["note-embedder"] = embedder_file
    return written
