"""Lesson 08's helpers: ONNX export and serving, int8 quantization, pruning, distillation,
and measuring them alike. Small randomly initialised CNNs keep these fast."""

from pathlib import Path

import httpx
import numpy as np
import onnx
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from helpers import compression, distillation, edge_measure
from helpers.models import ModelFormatError, load_model
from helpers.onnx_models import (
    ProbabilitiesOf,
    export_onnx,
    matmul_nodes,
    ort_session,
    save_onnx_model,
)
from helpers.server import ServerSettings, create_app
from helpers.serving import serve_in_thread
from helpers.wafermaps import PATTERNS, WaferMapCNN, make_wafer_maps

MAPS, LABELS = make_wafer_maps(40, seed=5)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return WaferMapCNN(channels=8).eval()


@pytest.fixture(scope="module")
def exported(cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "cnn.onnx"
    return export_onnx(ProbabilitiesOf(cnn), (torch.from_numpy(MAPS[:2]),), path, ["wafer_map"],
                       ["class_probabilities"], [{0: "batch"}],
                       check_examples=(torch.from_numpy(MAPS[:5]),))


def torch_probabilities(module, maps):
    with torch.inference_mode():
        return module.probabilities(torch.from_numpy(maps)).numpy()


# -- export and ONNX Runtime -----------------------------------------------------------------
def test_the_export_computes_what_torch_computes_at_any_batch_size(cnn, exported):
    session = ort_session(exported)
    for n in (1, 7, 40):  # 2 and 5 were the export's own checks
        got = session.run(None, {"wafer_map": MAPS[:n]})[0]
        np.testing.assert_allclose(got, torch_probabilities(cnn, MAPS[:n]), atol=1e-5)


def test_nodes_are_named_after_the_modules_they_came_from(exported):
    names = [n.name for n in onnx.load(str(exported)).graph.node]
    assert "features.0.0/Conv" in names and "features.2.2/Conv" in names
    assert len(names) == len(set(names))
    assert matmul_nodes(exported) == ["head.2/Gemm"]  # the one weighted matmul


def test_an_export_that_differs_from_torch_is_refused_and_leaves_no_file(cnn, tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(ValueError, match="differs from PyTorch"):
        export_onnx(ProbabilitiesOf(cnn), (torch.from_numpy(MAPS[:2]),), path, ["wafer_map"],
                    ["p"], [{0: "batch"}], atol=-1.0)  # no graph can be that close
    assert not path.exists() and not list(tmp_path.iterdir())


def test_the_repository_serves_an_onnx_model_like_any_other(cnn, exported, tmp_path):
    save_onnx_model(exported, "edge-cnn", 1, tmp_path, **{
        k: v for k, v in cnn.io_specs().items() if k in ("inputs", "outputs")})
    loaded = load_model("edge-cnn", repository=tmp_path)
    assert loaded.config.platform == "onnxruntime_onnx"
    np.testing.assert_allclose(loaded.predict(MAPS[:3]), torch_probabilities(cnn, MAPS[:3]),
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 1, 32, 32\)"):
        loaded.predict(np.zeros((2, 32, 32), np.float32))

    app = create_app(ServerSettings(repository=tmp_path, device="cpu", max_wait_ms=1))
    with serve_in_thread(app) as url:
        body = {"inputs": [{"name": "wafer_map", "shape": [2, 1, 32, 32], "datatype": "FP32",
                            "data": MAPS[:2].ravel().tolist()}]}
        answer = httpx.post(f"{url}/v2/models/edge-cnn/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        out = answer.json()["outputs"][0]
        assert out["name"] == "class_probabilities" and out["shape"] == [2, len(PATTERNS)]
        np.testing.assert_allclose(np.reshape(out["data"], (2, -1)),
                                   torch_probabilities(cnn, MAPS[:2]), atol=1e-5)


def test_a_file_that_is_not_onnx_or_has_other_inputs_is_refused_at_load(cnn, exported, tmp_path):
    specs = {k: v for k, v in cnn.io_specs().items() if k in ("inputs", "outputs")}
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph at all")
    save_onnx_model(junk, "junk", 1, tmp_path, **specs)
    with pytest.raises(ModelFormatError, match="not an ONNX graph"):
        load_model("junk", repository=tmp_path)
    renamed = dict(specs, inputs=[type(specs["inputs"][0])("image", "FP32", [-1, 1, 32, 32])])
    save_onnx_model(exported, "renamed", 1, tmp_path, **renamed)
    with pytest.raises(ModelFormatError, match=r"takes inputs \['wafer_map'\]"):
        load_model("renamed", repository=tmp_path)


# -- quantization ---------------------------------------------------------------------------
def test_static_int8_is_well_under_half_the_size_and_close_to_float(cnn, exported, tmp_path):
    wide = WaferMapCNN(channels=16).eval()  # weights large enough to dominate the file
    src = export_onnx(ProbabilitiesOf(wide), (torch.from_numpy(MAPS[:2]),), tmp_path / "w.onnx",
                      ["wafer_map"], ["class_probabilities"], [{0: "batch"}])
    dst = compression.quantize_static_onnx(src, tmp_path / "w8.onnx", MAPS)
    assert dst.stat().st_size < 0.45 * src.stat().st_size  # a quarter, plus the graph
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    got = ort_session(dst).run(None, {"wafer_map": MAPS})[0]
    assert np.abs(got - torch_probabilities(wide, MAPS)).max() < 0.05
    with pytest.raises(ValueError, match="at least one calibration input"):
        compression.quantize_static_onnx(src, tmp_path / "x.onnx", MAPS[:0])


def test_dynamic_int8_keeps_excluded_nodes_in_float(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    x = torch.randn(3, 5, 16)  # (B, T, C): linear layers become MatMul nodes
    src = export_onnx(mlp, (x,), tmp_path / "mlp.onnx", ["x"], ["y"], [{0: "batch"}])
    first, second = matmul_nodes(src)
    dst = compression.quantize_dynamic_onnx(src, tmp_path / "mlp8.onnx", exclude=[first])
    nodes = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert nodes.get(first) in ("MatMul", "Gemm"), "the excluded node stayed float"
    assert second not in nodes or nodes[second] not in ("MatMul", "Gemm"), "the other one is int8"
    assert any("Integer" in op or "Quant" in op for op in nodes.values())
    with pytest.raises(ValueError, match=r"not nodes of mlp.onnx: \['head/MatMul'\]"):
        compression.quantize_dynamic_onnx(src, tmp_path / "x.onnx", exclude=[first, "head/MatMul"])


def test_dynamic_int8_works_on_a_private_copy_of_its_source(tmp_path, monkeypatch):
    """ONNX Runtime writes and deletes <source>-inferred.onnx beside the graph it is given:
    two notebooks quantizing one shared graph at once would delete each other's."""
    import importlib

    # the module, not the function of the same name the package exports
    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")

    mlp = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    shared = tmp_path / "shared"
    shared.mkdir()
    src = export_onnx(mlp, (torch.randn(3, 5, 16),), shared / "mlp.onnx", ["x"], ["y"],
                      [{0: "batch"}])
    given, real = [], ort_quantize.load_model_with_shape_infer
    monkeypatch.setattr(ort_quantize, "load_model_with_shape_infer",
                        lambda path: given.append(Path(path)) or real(path))
    dst = compression.quantize_dynamic_onnx(src, tmp_path / "mlp8.onnx")
    assert given and all(path.parent != shared for path in given)
    assert sorted(p.name for p in shared.iterdir()) == ["mlp.onnx"]
    assert ort_session(dst).run(None, {"x": np.zeros((2, 5, 16), np.float32)})[0].shape == (2, 5, 4)


def test_op_types_choose_which_kinds_of_node_are_quantized(tmp_path):
    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table, self.proj = torch.nn.Embedding(500, 32), torch.nn.Linear(32, 32)

        def forward(self, ids):
            return self.proj(self.table(ids))

    ids = torch.randint(0, 500, (2, 6))
    src = export_onnx(Embed().eval(), (ids,), tmp_path / "e.onnx", ["ids"], ["y"], [{0: "batch"}])
    every = compression.quantize_dynamic_onnx(src, tmp_path / "every.onnx")
    matmuls = compression.quantize_dynamic_onnx(src, tmp_path / "mm.onnx", op_types=["MatMul"])
    inits = {p.stem: {i.name: i.data_type for i in onnx.load(str(p)).graph.initializer}
             for p in (every, matmuls)}
    assert onnx.TensorProto.INT8 in inits["every"].values() or \
        onnx.TensorProto.UINT8 in inits["every"].values()
    # By default the embedding table (a Gather) is int8 too; limited to MatMul it stays float.
    assert every.stat().st_size < 0.5 * matmuls.stat().st_size


def test_static_exclude_names_the_preprocessed_graph_and_refuses_others(exported, tmp_path):
    with pytest.raises(ValueError, match="not nodes of preprocessed.onnx"):
        compression.quantize_static_onnx(exported, tmp_path / "x.onnx", MAPS, exclude=["nope/Conv"])
    assert not (tmp_path / "x.onnx").exists()


def test_torchao_configs_quantize_or_say_why_not(cnn):
    for config in compression.TORCHAO_CONFIGS:
        quantized, note = compression.quantize_torchao(cnn, config, torch.from_numpy(MAPS[:2]))
        assert note.startswith(f"torchao {config}")
        if quantized is not None:
            with torch.inference_mode():
                out = quantized(torch.from_numpy(MAPS[:4]))
            assert out.shape == (4, len(PATTERNS))
    assert isinstance(cnn.head[-1].weight, torch.nn.Parameter), "the original is untouched"
    with pytest.raises(ValueError, match="unknown torchao config"):
        compression.quantize_torchao(cnn, "int3", torch.from_numpy(MAPS[:2]))


# -- pruning --------------------------------------------------------------------------------
def test_unstructured_pruning_zeroes_the_share_asked_and_fine_tuning_keeps_it(cnn):
    pruned = compression.prune_unstructured(cnn, 0.6)
    assert compression.sparsity(pruned) == pytest.approx(0.6, abs=0.01)
    assert compression.sparsity(cnn) < 0.01, "the original keeps its weights"
    assert not any("mask" in name for name, _ in pruned.named_buffers()), "no masks left"
    tuned = compression.fine_tune(pruned, MAPS, LABELS, epochs=1, lr=1e-2)
    assert compression.sparsity(tuned) == pytest.approx(0.6, abs=0.01)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        compression.prune_unstructured(cnn, 1.0)


def test_pruned_weights_compress_better_than_dense_ones(cnn):
    dense = edge_measure.module_size(cnn)
    sparse = edge_measure.module_size(compression.prune_unstructured(cnn, 0.8))
    assert sparse[0] == pytest.approx(dense[0], rel=0.02), "same tensors, same bytes"
    assert sparse[1] < 0.6 * dense[1], "but the zeros zip away"


def test_channel_pruning_builds_a_narrower_network_that_keeps_the_strongest_filters(cnn):
    same = compression.prune_channels(cnn, 1.0)
    np.testing.assert_allclose(torch_probabilities(same, MAPS), torch_probabilities(cnn, MAPS),
                               atol=1e-6)
    half = compression.prune_channels(cnn, 0.5)
    assert isinstance(half, WaferMapCNN) and half.channels == 4
    assert sum(p.numel() for p in half.parameters()) < 0.35 * sum(
        p.numel() for p in cnn.parameters())
    first_old, first_new = cnn.features[0][0].weight.detach(), half.features[0][0].weight.detach()
    strongest = first_old.abs().sum(dim=(1, 2, 3)).topk(4).values.sort().values
    np.testing.assert_allclose(first_new.abs().sum(dim=(1, 2, 3)).sort().values, strongest)
    assert torch_probabilities(half, MAPS).shape == (len(MAPS), len(PATTERNS))


# -- distillation ---------------------------------------------------------------------------
# The distillation loss is lesson 08's exercise, so the package does not ship one: the
# trainer is tested with the teacher's soft targets alone (alpha = 1, T = 2, no T**2).
def soft_targets_only(student_logits, teacher_logits, labels):
    return F.kl_div(F.log_softmax(student_logits / 2, -1), F.softmax(teacher_logits / 2, -1),
                    reduction="batchmean")


def test_the_student_learns_from_the_teachers_outputs_not_the_labels(cnn):
    torch.manual_seed(1)
    student = WaferMapCNN(channels=4).eval()
    untrained = torch_probabilities(student, MAPS)
    distillation.train_student(student, cnn, MAPS, np.zeros_like(LABELS), loss_fn=soft_targets_only,
                               epochs=25, lr=1e-2)
    teacher_says, student_says = torch_probabilities(cnn, MAPS), torch_probabilities(student, MAPS)
    # Labels all zero, so whatever the student learned came from the teacher's logits.
    assert np.abs(student_says - teacher_says).sum() < 0.5 * np.abs(untrained - teacher_says).sum()


def test_train_student_learns_stops_on_its_budget_and_refuses_a_vector_loss(cnn):
    student = WaferMapCNN(channels=4)
    _, info = distillation.train_student(student, cnn, MAPS, LABELS, loss_fn=soft_targets_only,
                                         epochs=3)
    assert info["epochs"] == 3 and np.isfinite(info["final_loss"])
    _, info = distillation.train_student(WaferMapCNN(channels=4), cnn, MAPS, LABELS,
                                         loss_fn=distillation.hard_label_loss, epochs=3,
                                         time_budget_s=0.0)
    assert info["epochs"] == 1, "past the budget after the first epoch"
    with pytest.raises(ValueError, match="must be a scalar"):
        distillation.train_student(WaferMapCNN(channels=4), cnn, MAPS, LABELS,
                                   loss_fn=lambda s, t, y: F.cross_entropy(s, y, reduction="none"))


# -- measuring ------------------------------------------------------------------------------
def test_retrieval_agreement_sees_what_the_cosine_hides():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 32))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert edge_measure.retrieval_agreement(ref, ref, k=5) == 1.0
    noisy = ref + 0.03 * rng.normal(size=ref.shape)
    quality = edge_measure.embedding_quality(noisy, ref, k=5)
    assert quality["cosine_mean"] > 0.97 and quality["agreement"] < 0.85
    with pytest.raises(ValueError, match="as many embeddings"):
        edge_measure.retrieval_agreement(ref[:10], ref, k=5)


def test_measure_times_every_candidate_and_relates_it_to_the_first(cnn, exported):
    session = ort_session(exported)
    candidates = [
        edge_measure.Candidate("torch", lambda b: torch_probabilities(cnn, b),
                               edge_measure.module_size(cnn)),
        edge_measure.Candidate("onnx", lambda b: session.run(None, {"wafer_map": b})[0],
                               edge_measure.file_size(exported)),
    ]
    table = edge_measure.measure(
        candidates, MAPS[:1], MAPS[:32], rounds=2, seconds_per_round=0.01,
        quality=lambda c: {"accuracy": edge_measure.accuracy(c.predict, MAPS, LABELS)})
    assert list(table.index) == ["torch", "onnx"]
    assert table.loc["torch", ["size_ratio", "speedup_b1", "speedup_b32"]].tolist() == [1, 1, 1]
    assert table.loc["torch", "accuracy"] == pytest.approx(table.loc["onnx", "accuracy"])
    assert (table[["ms_b1", "ms_b32"]] > 0).all().all()


def test_interleaved_timing_ranks_a_slower_call_slower():
    import time

    ms = edge_measure.interleaved_latency_ms({"fast": lambda: None,
                                              "slow": lambda: time.sleep(0.002)},
                                             rounds=3, seconds_per_round=0.01)
    assert ms["slow"] >= 2.0 > ms["fast"]


def test_an_edge_budget_names_each_limit_a_candidate_breaks():
    table = pd.DataFrame({"size_kb": [560.0, 150.0, 140.0], "zipped_kb": [500.0, 120, 60],
                          "ms_b1": [0.5, 0.2, 0.4], "accuracy": [0.95, 0.94, 0.80]},
                         index=["fp32", "good", "bad"])
    budget = edge_measure.EdgeBudget("edge box", max_kb=200, max_latency_ratio=0.5,
                                     max_quality_drop=0.02)
    verdict = budget.check(table)
    assert verdict["good"] == "fits"
    assert "560 KB > 200 KB" in verdict["fp32"]
    assert "0.80x fp32 > 0.50x" in verdict["bad"]
    assert "accuracy 0.150 below fp32" in verdict["bad"] and "KB" not in verdict["bad"]


def test_the_weight_format_follows_the_cpu_and_a_bad_one_is_refused(exported, tmp_path,
                                                                    monkeypatch):
    import platform
    from pathlib import Path

    fmt, why = compression.int8_weight_format()
    assert fmt in ("int8", "uint8") and why
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    real_read = Path.read_text
    for flags, want in [("fpu avx2 fma", "uint8"), ("fpu avx2 avx512_vnni", "int8"),
                        ("fpu avx2 avx_vnni", "int8")]:
        monkeypatch.setattr(Path, "read_text",
                            lambda self, *a, f=flags, **k: f"flags\t: {f}\n"
                            if str(self) == "/proc/cpuinfo" else real_read(self, *a, **k))
        assert compression.int8_weight_format()[0] == want, flags
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert compression.int8_weight_format()[0] == "int8"
    with pytest.raises(ValueError, match="weight_type is 'int8', 'uint8' or 'auto'"):
        compression.quantize_static_onnx(exported, tmp_path / "x.onnx", MAPS, weight_type="int4")
