import json
import pickle

import numpy as np
import pytest
import torch

from helpers import data, models, training


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    training.train_wafer_models(root, n_rows=8000, names=("wafer-forest", "wafer-mlp"))
    return root


def test_repository_layout_and_config(repo):
    assert models.list_models(repo) == ["wafer-forest", "wafer-mlp"]
    for name, weights in [("wafer-forest", "model.skops"), ("wafer-mlp", "model.safetensors")]:
        folder = repo / name / "1"
        config = json.loads((folder / "config.json").read_text())
        assert (folder / weights).is_file() and config["weights_file"] == weights
        assert config["inputs"][0] == {"name": "process_features", "datatype": "FP32",
                                       "shape": [-1, len(data.FEATURES)]}
        assert config["outputs"][0]["name"] == "defect_probability"
        assert config["feature_names"] == data.FEATURES
        assert 0.5 < config["training"]["val_accuracy"] <= 1


@pytest.mark.parametrize("name", ["wafer-forest", "wafer-mlp"])
def test_loaded_models_predict_probabilities_better_than_chance(repo, name):
    model = models.load_model(name, repository=repo, device="cpu")
    df = data.make_wafer_records(4000, seed=7)
    p = model.predict_proba(data.feature_matrix(df))
    assert p.shape == (4000,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    # Ranks defective wafers above good ones far better than a coin flip.
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(df[data.LABEL], p) > 0.65
    assert model.predict_proba(np.empty((0, 8), np.float32)).shape == (0,)
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        model.predict_proba(np.zeros((3, 5), np.float32))


def test_latest_version_is_default_and_missing_version_names_the_choices(repo):
    assert models.list_versions("wafer-mlp", repo) == [1, 2]
    assert models.load_model("wafer-mlp", repository=repo, device="cpu").config.version == 2
    assert models.load_model("wafer-mlp", 1, repository=repo, device="cpu").config.version == 1
    with pytest.raises(models.ModelNotFoundError, match=r"no version 7.*\[1, 2\]"):
        models.load_model("wafer-mlp", 7, repository=repo)
    with pytest.raises(models.ModelNotFoundError, match="'wafer-cnn'.*wafer-forest"):
        models.load_model("wafer-cnn", repository=repo)
    with pytest.raises(models.ModelNotFoundError, match="whole number"):
        models.load_model("wafer-mlp", "latest-ish", repository=repo)


def test_versions_are_immutable(repo):
    before = (repo / "wafer-mlp" / "1" / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        models.save_torch_model(models.WaferMLP(), "wafer-mlp", 1, repo)
    assert (repo / "wafer-mlp" / "1" / "model.safetensors").read_bytes() == before


def test_a_swapped_weights_file_is_never_unpickled(repo, tmp_path):
    # Copy the repo, then replace the forest's file with a pickle that would run code.
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (copy / "wafer-forest" / "1" / "model.skops").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(models.ModelFormatError, match="SHA-256"):
        models.load_model("wafer-forest", repository=copy)
    assert not marker.exists()


def test_weights_outside_the_repository_are_refused(repo, tmp_path):
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config_path = copy / "wafer-mlp" / "1" / "config.json"
    config = json.loads(config_path.read_text())
    config["weights_file"] = "../../../../outside.pt"
    config_path.write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="outside the repository"):
        models.load_model("wafer-mlp", 1, repository=copy)


def test_a_model_file_of_the_wrong_kind_gets_a_clear_error(repo, tmp_path):
    # A valid sklearn pickle saved under a config that says torch weights.
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    folder = copy / "wafer-mlp" / "1"
    forest_bytes = (copy / "wafer-forest" / "1" / "model.skops").read_bytes()
    (folder / "model.safetensors").write_bytes(forest_bytes)
    config = json.loads((folder / "config.json").read_text())
    config["weights_sha256"] = models.sha256_of(folder / "model.safetensors")  # kind wrong
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="not a WaferMLP state dict"):
        models.load_model("wafer-mlp", 1, repository=copy, device="cpu")


def test_a_broken_config_gets_a_clear_error(repo, tmp_path):
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / "wafer-mlp" / "1" / "config.json").write_text('{"name": "wafer-mlp"}')
    with pytest.raises(models.ModelFormatError, match="not a valid model config"):
        models.load_model("wafer-mlp", 1, repository=copy)


def test_the_two_mlp_versions_differ(repo):
    x = data.feature_matrix(data.make_wafer_records(200, seed=9))
    v1 = models.load_model("wafer-mlp", 1, repository=repo, device="cpu")
    v2 = models.load_model("wafer-mlp", 2, repository=repo, device="cpu")
    assert v1.config.architecture["hidden"] == 64 and v2.config.architecture["hidden"] == 128
    assert not np.allclose(v1.predict_proba(x), v2.predict_proba(x))


def test_training_skips_existing_versions(repo):
    before = (repo / "wafer-mlp" / "1" / "config.json").read_text()
    training.train_wafer_models(repo, n_rows=1000, names=("wafer-forest", "wafer-mlp"))
    assert (repo / "wafer-mlp" / "1" / "config.json").read_text() == before


def test_mlp_standardises_inside_the_model():
    mlp = models.WaferMLP(n_features=2, hidden=4)
    mlp.mean.copy_(torch.tensor([350.0, 2.0]))
    mlp.std.copy_(torch.tensor([4.0, 0.15]))
    with torch.inference_mode():
        out = mlp(torch.tensor([[350.0, 2.0], [354.0, 2.15]]))
    assert out.shape == (2,)


@pytest.mark.cuda
def test_mlp_runs_on_cuda(repo):
    model = models.load_model("wafer-mlp", repository=repo, device="cuda")
    x = data.feature_matrix(data.make_wafer_records(256))
    cpu = models.load_model("wafer-mlp", repository=repo, device="cpu").predict_proba(x)
    np.testing.assert_allclose(model.predict_proba(x), cpu, atol=1e-5)


def test_training_cli_lists_the_repository(repo, capsys):
    training.main(["--list", "--repository", str(repo)])
    out = capsys.readouterr().out
    assert "wafer-forest [1]" in out and "wafer-mlp [1, 2]" in out


class Gadget:
    """A type skops does not trust: loading must refuse it before building it."""

    built = 0

    def __setstate__(self, state):
        Gadget.built += 1
        self.__dict__.update(state)

    def predict_proba(self, x):
        return np.zeros((len(x), 2))


def test_a_skops_file_with_an_untrusted_type_is_refused_before_it_is_built(tmp_path):
    import skops.io

    folder = tmp_path / "gadget" / "1"
    folder.mkdir(parents=True)
    gadget = Gadget()
    gadget.n_features_in_ = 8
    skops.io.dump(gadget, folder / "model.skops")
    config = models.ModelConfig("gadget", 1, models.SKLEARN_PLATFORM,
                                [models.TensorSpec("process_features", "FP32", [-1, 8])],
                                [models.TensorSpec("defect_probability", "FP32", [-1])],
                                "model.skops", models.sha256_of(folder / "model.skops"))
    (folder / "config.json").write_text(config.to_json())
    with pytest.raises(models.ModelFormatError, match="does not trust.*Gadget") as refused:
        models.load_model("gadget", repository=tmp_path)
    assert str(tmp_path) not in str(refused.value) and Gadget.built == 0
    # The operator, not the folder, decides what is trusted:
    trusted = f"{Gadget.__module__}.Gadget"
    model = models.load_model("gadget", repository=tmp_path, trusted_types=[trusted])
    assert Gadget.built == 1 and model.predict(np.zeros((2, 8), np.float32)).shape == (2,)


def test_retired_pickle_formats_are_retrained_by_make_data(tmp_path):
    folder = models.save_torch_model(models.WaferMLP(hidden=8), "wafer-mlp", 1, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["platform"] = "pytorch_state_dict"  # what earlier versions of the course wrote
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="retrain"):
        models.load_model("wafer-mlp", 1, repository=tmp_path)
    training.train_wafer_models(tmp_path, n_rows=2000, names=("wafer-mlp",))
    assert models.load_model("wafer-mlp", 1, repository=tmp_path, device="cpu").config.platform \
        == models.TORCH_PLATFORM


def test_error_messages_name_files_relative_to_the_repository(repo, tmp_path):
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    (copy / "wafer-mlp" / "1" / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(models.ModelFormatError) as error:
        models.load_model("wafer-mlp", 1, repository=copy)
    assert "wafer-mlp/1/model.safetensors" in str(error.value)
    assert str(tmp_path) not in str(error.value)


def test_an_architecture_the_weights_do_not_match_is_refused_before_it_is_built(repo, tmp_path):
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config_path = copy / "wafer-mlp" / "1" / "config.json"
    config = json.loads(config_path.read_text())
    config["architecture"]["hidden"] = 4_000_000  # ~128 GB of weights if it were built
    config_path.write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="do not match the architecture"):
        models.load_model("wafer-mlp", 1, repository=copy, device="cpu")


def test_a_config_copied_into_another_folder_is_refused(repo, tmp_path):
    import shutil
    copy = tmp_path / "repo"
    shutil.copytree(repo / "wafer-mlp" / "1", copy / "other" / "1")
    with pytest.raises(models.ModelFormatError, match="says it is 'wafer-mlp'"):
        models.load_model("other", 1, repository=copy)


def test_the_embedder_entry_names_only_the_packages_own_weights(tmp_path):
    folder = models.write_embedder_entry(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["weights_file"] = "../../../../etc/passwd"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(models.ModelFormatError, match="must be 'model.safetensors'"):
        models.load_model("note-embedder", repository=tmp_path)
