"""The data layer on its own: batch structures, exact weights, sharding, determinism, and
the one-line errors of bad sources."""

from __future__ import annotations

from collections import UserDict

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from sharpcli.distributed import Dist
from sharpcli.cli.names import cli_message
from sharpcli.errors import SharpError
from sharpcli.sources import Data, StreamSource, TensorSource, as_data
from sharpcli.sources.structure import describe, fingerprint, plain, to_device


def token_batches(sizes=(2, 3, 1, 4, 2), seq=5, seed=0):
    """(inputs dict, labels) batches of varying size with -100 padding."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        ids = torch.randint(0, 7, (n, seq), generator=gen)
        labels = ids.clone()
        labels[:, torch.randint(1, seq, (1,), generator=gen)] = -100
        out.append(({"ids": ids}, labels))
    return out


def tokens(batch) -> int:
    return int((batch[1] != -100).sum())


def test_in_memory_weights_are_each_chunks_share_of_the_examples():
    x, y = torch.randn(23, 3), torch.randn(23)
    data = as_data(x, y, chunk_size=5)
    weights = [w for w, _ in data]
    assert weights == [5 / 23] * 4 + [3 / 23]
    assert data.total == 23 and data.n_batches == 5


def test_stream_weights_are_terms_over_the_global_count():
    batches = token_batches()
    data = as_data(batches, num_terms=tokens)
    total = sum(tokens(b) for b in batches)
    assert data.total == total
    assert [w for w, _ in data] == [tokens(b) / total for b in batches]


def test_a_callable_source_is_called_afresh_on_every_pass():
    batches = token_batches()
    calls = []

    def make():
        calls.append(1)
        return iter(batches)

    data = as_data(make, num_terms=tokens)
    list(data), list(data)
    assert len(calls) == 4  # count + the determinism pass, then two passes


def test_default_terms_count_examples_of_the_first_input_tensor():
    data = as_data(token_batches())
    assert data.total == 12


def test_a_map_style_dataset_is_batched_by_chunk_size():
    ds = TensorDataset(torch.randn(10, 2), torch.randn(10))
    data = as_data(ds, chunk_size=4)
    assert [round(w * 10) for w, _ in data] == [4, 4, 2]


def test_user_dicts_and_batch_encodings_are_walked_like_dicts():
    from transformers import BatchEncoding

    batch = (BatchEncoding({"ids": torch.ones(2, 3)}), UserDict(y=torch.zeros(2)))
    assert isinstance(plain(batch)[0], dict) and isinstance(plain(batch)[1], dict)
    moved = to_device(batch, "cpu", dtype=torch.float64)
    assert moved[0]["ids"].dtype == torch.float64
    assert "Tensor(2, 3)" in describe(batch)


def test_to_device_leaves_tensors_in_place_without_a_copy():
    t = torch.ones(3)
    assert to_device({"a": t}, "cpu")["a"] is t


def test_fingerprints_see_a_reordering_within_a_batch():
    t = torch.arange(6.0)
    assert fingerprint(t) != fingerprint(t.flip(0))
    assert fingerprint(t) == fingerprint(t.clone())


class CountingDataset(Dataset):
    def __init__(self, n):
        self.n, self.read = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.read.append(i)
        return torch.tensor([float(i)]), torch.tensor(float(i))


def test_each_process_reads_only_its_share_of_a_data_loader():
    ds = CountingDataset(10)
    source = StreamSource(DataLoader(ds, batch_size=3))  # batches [0-2] [3-5] [6-8] [9]
    got = [b[0].flatten().tolist() for b in source.batches(Dist(rank=1, world_size=2))]
    assert got == [[3.0, 4.0, 5.0], [9.0]]
    assert sorted(ds.read) == [3, 4, 5, 9]


def test_each_process_takes_every_other_batch_of_a_list():
    batches = token_batches()
    mine = list(StreamSource(batches).batches(Dist(rank=0, world_size=2)))
    assert [len(b[1]) for b in mine] == [2, 1, 2]


def test_in_memory_shards_are_contiguous():
    source = TensorSource(torch.arange(7.0), torch.arange(7.0), chunk_size=2)
    assert source.slices(Dist(rank=1, world_size=2)) == [slice(3, 5), slice(5, 7)]


def test_only_the_batch_in_use_and_the_next_are_alive():
    """Streaming: while batch i is worked on, batch i + 1 is already read (its transfer under
    way) and batches before i are freed."""
    import gc
    import weakref

    refs = []

    def make():
        for i in range(6):
            t = torch.full((4, 2), float(i))
            refs.append(weakref.ref(t))
            yield t, torch.zeros(4)

    data = as_data(make, check_deterministic=False)
    data.total  # the counting pass
    refs.clear()
    for i, (_, batch) in enumerate(data):
        gc.collect()
        assert len(refs) == min(i + 2, 6)  # this one and the next
        assert [r() is not None for r in refs[:i]] == [False] * i
        assert float(batch[0][0, 0]) == i


@pytest.mark.parametrize("bad, words", [
    (iter([(torch.ones(1), torch.ones(1))]), "one-pass iterator"),
    (42, "must be a DataLoader"),
    ([], "yields no batches"),
])
def test_bad_sources_are_one_line_errors(bad, words):
    with pytest.raises(SharpError, match=words):
        as_data(bad).total


def test_num_terms_that_count_nothing_or_return_nonsense_are_errors():
    with pytest.raises(SharpError, match="counts no loss terms"):
        as_data(token_batches(), num_terms=lambda b: 0).total
    with pytest.raises(SharpError, match="whole number"):
        as_data(token_batches(), num_terms=lambda b: -1).total
    with pytest.raises(SharpError, match="num_terms must be a callable"):
        as_data(token_batches(), num_terms=3)


def test_a_batch_with_no_terms_is_skipped_not_nan():
    batches = token_batches()
    batches[1] = (batches[1][0], torch.full_like(batches[1][1], -100))
    data = as_data(batches, num_terms=tokens)
    assert len(list(data)) == 4


def test_a_shuffled_loader_is_refused_unless_the_check_is_off():
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.randn(8)), batch_size=4, shuffle=True)
    with pytest.raises(SharpError, match="shuffle=True"):
        as_data(loader)
    assert as_data(loader, check_deterministic=False).total == 8


def test_a_source_that_changes_between_passes_is_refused():
    def noisy():
        return iter([(torch.randn(3, 2), torch.zeros(3))])

    with pytest.raises(SharpError, match="different batches on two passes"):
        as_data(noisy).total
    assert as_data(noisy, check_deterministic=False).total == 3


def test_errors_name_the_python_arguments_and_the_cli_says_flags():
    with pytest.raises(SharpError, match="^data yields no batches") as info:
        as_data([]).total
    assert cli_message(info.value) == "--data yields no batches"
    with pytest.raises(SharpError, match="y is missing"):
        as_data(torch.ones(3))
    with pytest.raises(SharpError, match="pass check_deterministic=False to") as info:
        as_data(torch.utils.data.DataLoader(torch.zeros(4, 2), shuffle=True))
    assert "pass --no-check-deterministic to" in cli_message(info.value)


def test_given_total_terms_skip_the_count():
    data = Data(StreamSource(token_batches()), num_terms=tokens, total_terms=100,
                check_deterministic=False)
    assert sum(w for w, _ in data) == pytest.approx(sum(tokens(b) for b in token_batches()) / 100)
