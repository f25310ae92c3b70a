"""The offline default task: digits data, splits, train-once caching and reproducibility."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from prune_gym.finetune import TrainConfig
from prune_gym.tasks import MissingResourceError, atomic_save


def test_splits_are_fixed_disjoint_and_cover_the_data(digits_task):
    splits = digits_task.load_splits()
    sizes = [len(s) for s in (splits.train, splits.reward, splits.test)]
    assert sum(sizes) == 1797 and sizes == [1078, 359, 360]
    x, y = splits.train.tensors
    assert x.shape[1:] == (1, 8, 8) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    again = digits_task.load_splits()
    assert torch.equal(again.reward.tensors[0], splits.reward.tensors[0])
    # A new seed reshuffles only the held-out part: train never changes, reward and test never overlap.
    other = digits_task.load_splits(seed=3)
    assert torch.equal(other.train.tensors[0], x)
    held_out = torch.cat([splits.reward.tensors[0], splits.test.tensors[0]]).flatten(1)
    reward, test = other.reward.tensors[0].flatten(1), other.test.tensors[0].flatten(1)
    assert not torch.equal(reward, splits.reward.tensors[0].flatten(1))
    assert sorted(map(tuple, torch.cat([reward, test]).tolist())) == sorted(map(tuple, held_out.tolist()))
    with pytest.raises(ValueError, match="data_dir"):
        digits_task.load_splits(data_dir="/somewhere")


def test_trains_once_then_loads_from_the_cache(digits_task, digits_model_state, monkeypatch):
    assert digits_task.cache_path.is_file()  # written by the session's first use

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been loaded, not retrained")

    monkeypatch.setattr(type(digits_task), "train", no_training)
    model = digits_task.load_model()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in digits_model_state.items())


def test_default_model_is_accurate(digits_task, digits_model):
    from prune_gym.evaluation import evaluate_accuracy

    assert evaluate_accuracy(digits_model, digits_task.load_splits().test, "cpu") > 0.95


def test_training_is_reproducible_whatever_the_thread_count(digits_task):
    config = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first = digits_task.train(config).state_dict()
        torch.set_num_threads(1)
        second = digits_task.train(config).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_explicit_weights_path_must_exist(digits_task, tmp_path):
    with pytest.raises(MissingResourceError, match="PRUNE_GYM_DIGITS_WEIGHTS"):
        digits_task.load_model(tmp_path / "missing.pt")


def test_a_corrupt_cache_is_rebuilt(digits_task, tmp_path, monkeypatch, digits_model_state):
    monkeypatch.setenv("PRUNE_GYM_CACHE", str(tmp_path))
    digits_task.cache_path.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(type(digits_task), "train", lambda self, *a, **k: _model_from(self, digits_model_state))
    model = digits_task.load_model()
    assert torch.equal(model.state_dict()["head.2.weight"], digits_model_state["head.2.weight"])
    assert torch.load(digits_task.cache_path, weights_only=True)["state_dict"].keys() == digits_model_state.keys()


def _model_from(task, state):
    model = task.build_model()
    model.load_state_dict(state)
    return model.eval()


def _writer(path: str, value: float, rounds: int) -> None:
    for _ in range(rounds):
        atomic_save({"w": torch.full((200_000,), value)}, path)


def test_concurrent_writers_never_leave_a_partial_cache_file(tmp_path):
    path = tmp_path / "model.pt"
    context = mp.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(path), float(v), 15)) for v in (1, 2)]
    for writer in writers:
        writer.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        if path.exists():
            tensor = torch.load(path, weights_only=True)["w"]  # never a torn file
            assert tensor.numel() == 200_000 and float(tensor.min()) == float(tensor.max())
            reads += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert reads > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary files left
