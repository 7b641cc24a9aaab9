import numpy as np
import pytest
import torch

from helpers import models
from helpers.wafermaps import MAP_SIZE, PATTERNS, WaferMapCNN, make_wafer_maps, train_wafer_cnn


def failing_share(maps, region):
    return ((maps[:, 0] == 1.0) & region).sum() / max(1, region.sum() * len(maps))


def regions(size=MAP_SIZE):
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - c, y - c) / (size / 2)
    return r < 0.25, (r > 0.88) & (r <= 1.0), r > 1.0


def test_maps_are_deterministic_round_and_coded_0_half_1():
    maps, labels = make_wafer_maps(45, seed=3)
    again, labels_again = make_wafer_maps(45, seed=3)
    np.testing.assert_array_equal(maps, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert maps.shape == (45, 1, MAP_SIZE, MAP_SIZE) and maps.dtype == np.float32
    assert set(np.unique(maps)) <= {0.0, 0.5, 1.0}
    _, _, outside = regions()
    assert (maps[:, 0][:, outside] == 0).all()  # no dies outside the wafer
    assert sorted(np.bincount(labels)) == [5] * 9  # classes drawn evenly


def test_patterns_put_failures_where_their_names_say():
    centre, edge, _ = regions()
    by = {p: make_wafer_maps(40, seed=1, patterns=[p])[0] for p in PATTERNS}
    assert failing_share(by["center"], centre) > 5 * failing_share(by["center"], edge)
    assert failing_share(by["edge-ring"], edge) > 5 * failing_share(by["edge-ring"], centre)
    assert failing_share(by["near-full"], centre) > 0.7
    assert failing_share(by["none"], centre) < 0.06
    assert (by["random"][:, 0] == 1).mean() > 3 * (by["none"][:, 0] == 1).mean()


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="'blob'"):
        make_wafer_maps(3, patterns=["blob"])
    with pytest.raises(ValueError):
        make_wafer_maps(-1)


def test_cnn_shapes_and_probabilities():
    model = WaferMapCNN(channels=4).eval()
    with torch.inference_mode():
        probs = model.probabilities(torch.zeros(3, 1, MAP_SIZE, MAP_SIZE))
    assert probs.shape == (3, 9)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_cnn_learns_and_round_trips_through_the_repository(tmp_path):
    cnn, info = train_wafer_cnn(n_maps=1200, epochs=4)
    assert info["val_accuracy"] > 3 / 9  # three times the 1/9 of guessing
    models.save_torch_model(cnn, "wafer-cnn", 1, tmp_path, info)
    loaded = models.load_model("wafer-cnn", repository=tmp_path, device="cpu")
    assert loaded.config.inputs[0].shape == [-1, 1, MAP_SIZE, MAP_SIZE]
    maps, _ = make_wafer_maps(7, seed=5)
    with torch.inference_mode():
        expected = cnn.probabilities(torch.from_numpy(maps)).numpy()
    np.testing.assert_allclose(loaded.predict_proba(maps), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(batch, 1, 32, 32\)"):
        loaded.predict_proba(np.zeros((2, 32, 32), np.float32))
    assert loaded.predict_proba(np.zeros((0, 1, 32, 32), np.float32)).shape == (0, 9)


def test_the_server_serves_wafer_maps_over_v2(tmp_path):
    import httpx

    from helpers.server import ServerSettings, create_app
    from helpers.serving import serve_in_thread

    models.save_torch_model(WaferMapCNN(channels=4), "wafer-cnn", 1, tmp_path)
    maps, _ = make_wafer_maps(2, seed=8)
    body = {"inputs": [{"name": "wafer_map", "shape": [2, 1, MAP_SIZE, MAP_SIZE],
                        "datatype": "FP32", "data": maps.ravel().tolist()}]}
    app = create_app(ServerSettings(repository=tmp_path, device="cpu"))
    with serve_in_thread(app) as url:
        response = httpx.post(url + "/v2/models/wafer-cnn/infer", json=body)
        wrong = httpx.post(url + "/v2/models/wafer-cnn/infer", json={"inputs": [
            {**body["inputs"][0], "shape": [2, 1, 16, 64]}]})
    (out,) = response.json()["outputs"]
    assert out["name"] == "class_probabilities" and out["shape"] == [2, 9]
    assert np.allclose(np.reshape(out["data"], (2, 9)).sum(axis=1), 1, atol=1e-5)
    assert wrong.status_code == 400 and "does not fit" in wrong.json()["error"]
