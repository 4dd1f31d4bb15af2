import os

# Keep the test suite's thread use predictable on small CI machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """Replace training by a fake that returns a well-formed results dict and counts calls."""
    from nclib import experiments as E

    calls = []

    def fake_run(config, *, device=None, checkpoint=None, progress=True, provenance_extra=None):
        calls.append(config.name)
        n = config.epochs
        hist = dict(epoch=list(range(1, n + 1)), nc1=[1.0 / e for e in range(1, n + 1)],
                    train_acc=[1.0] * n, test_acc=[0.9] * n)
        res = dict(format=2, config=config.to_dict(), config_hash=E.config_hash(config), history=hist,
                   final=dict(epoch=n, nc1=hist["nc1"][-1], train_acc=1.0, test_acc=0.9), geometry=None,
                   parameters=dict(total=10, trainable=10, classifier_weight=4, feature_dim=2),
                   provenance=dict(device="cuda" if config.profile == "full" else "cpu",
                                   device_name="FakeGPU 9000" if config.profile == "full" else "fakecpu",
                                   date="2026-01-02T03:04:05+00:00", git_commit="abc123def456", wall_time_s=42.0,
                                   **(provenance_extra or {})))
        res["content_hash"] = E.content_hash(res)
        return res

    monkeypatch.setattr(E, "run_experiment", fake_run)
    monkeypatch.setenv("NCLIB_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.setenv("NCLIB_SMOKE_RESULTS", str(tmp_path / "smoke"))
    return calls


@pytest.fixture
def interrupt_after_epoch(monkeypatch):
    """``interrupt_after_epoch(n)``: training raises KeyboardInterrupt right after its checkpoint of
    epoch ``n`` is written (a Ctrl-C at that point); ``interrupt_after_epoch(None)`` restores saving."""
    from nclib import train as T

    real = T._atomic_save

    def install(n):
        if n is None:
            monkeypatch.setattr(T, "_atomic_save", real)
            return

        def save_then_interrupt(obj, path):
            real(obj, path)
            if obj["epoch"] == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(T, "_atomic_save", save_then_interrupt)

    return install
