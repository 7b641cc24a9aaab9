import pytest
import torch

from helpers import device, settings


def test_profile_defaults_to_full(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert settings.profile() == "full"
    assert settings.by_profile(full=10, quick=1) == 10


def test_quick_profile_picks_quick_size(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "Quick")
    assert settings.is_quick()
    assert settings.by_profile(full=10, quick=1) == 1


def test_unknown_profile_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(ValueError, match="'fast'"):
        settings.profile()


def test_data_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert settings.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("COURSE_DATA_DIR")
    assert settings.data_dir() == settings.course_root() / "data"


def test_pick_device_order_without_gpu(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else None
    picked = device.pick_device()
    if expected:
        assert picked.type == "cuda"
    else:
        assert picked.type in {"mps", "cpu"}


def test_device_env_override_and_argument(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert device.pick_device().type == "cpu"
    assert device.pick_device("cpu").type == "cpu"


def test_unavailable_device_is_an_error_not_a_silent_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="'cuda'"):
        device.pick_device("cuda")


def test_nonsense_device_name_is_refused():
    with pytest.raises(RuntimeError):
        device.pick_device("gpu")


def test_device_timer_synchronises_at_both_ends(monkeypatch):
    calls = []
    monkeypatch.setattr(device, "synchronize", lambda d: calls.append(str(d)))
    with device.DeviceTimer("cpu") as timer:
        calls.append("work")
    assert calls == ["cpu", "work", "cpu"]
    assert timer.elapsed_s >= 0 and timer.elapsed_ms == timer.elapsed_s * 1000


@pytest.mark.cuda
def test_cuda_timer_waits_for_the_kernel():
    dev = torch.device("cuda")
    x = torch.randn(2048, 2048, device=dev)
    with device.DeviceTimer(dev) as timer:
        (x @ x).sum()
    assert timer.elapsed_s > 0
    assert "cuda" in device.describe(dev)


def test_workers_share_the_cores_without_oversubscribing_them():
    assert device.threads_per_worker(1, cores=8) == 8
    assert device.threads_per_worker(2, cores=8) == 4
    assert device.threads_per_worker(3, cores=8) == 2   # 3 x 2 <= 8: never more than the cores
    assert device.threads_per_worker(4, cores=2) == 1   # but every worker gets one
    assert 1 <= device.usable_cores()
    with pytest.raises(ValueError, match="workers"):
        device.threads_per_worker(0, cores=8)


def test_the_server_sets_torch_threads_from_its_workers(monkeypatch):
    from helpers.server import ServerSettings

    monkeypatch.setattr(device, "usable_cores", lambda: 8)
    assert ServerSettings(workers=2).intra_op_threads() == 4
    assert ServerSettings(workers=2, torch_threads=1).intra_op_threads() == 1
    assert ServerSettings.from_env({"SERVE_TORCH_THREADS": "3"}).intra_op_threads() == 3


def test_server_flags_give_the_same_settings_as_the_environment():
    from helpers.server import ServerSettings

    flags = ServerSettings.from_flags(["--max-batch-size", "8", "--max-wait-ms", "5",
                                       "--buckets", "16,64", "--workers", "2"])
    env = ServerSettings.from_env({"SERVE_MAX_BATCH_SIZE": "8", "SERVE_MAX_WAIT_MS": "5",
                                   "SERVE_BUCKETS": "16,64", "SERVE_WORKERS": "2"})
    assert flags == env
    assert flags.batch_policy().max_batch_size == 8 and flags.batch_policy().max_wait_s == 0.005
    assert flags.buckets == (16, 64) and flags.max_queue == ServerSettings().max_queue
