import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.datasets.text import Vocab, lengths, pad, tokenize

REAL = Path("/work/shared/data")


def write_sst2(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.tsv").write_text(
        "label\tsentence\n"
        "1\ta good film\n"
        "0\ta bad ( awful ) film\n"
        "1\tgood , good acting\n"
        "0\tbad plot\n"
        "1\tthe film is good\n"
        "0\tthe film is bad bad bad\n", encoding="utf-8")
    (folder / "dev.tsv").write_text(
        "label\tcontent\n"
        "1\ta -lrb- very -rrb- good film\n"
        "0\tcrème brûlée is bad\n", encoding="utf-8")
    (folder / "test.tsv").write_text("label\tcontent\n1\tgood\n0\tbad\n1\tfilm\n", encoding="utf-8")
    return folder


def write_rt(folder: Path, n: int = 20) -> Path:
    """n distinct snippets per class, spelling out i in yes/no words so every word also occurs in training."""
    folder.mkdir(parents=True, exist_ok=True)
    bits = [" ".join("yes" if i >> b & 1 else "no" for b in range(5)) for i in range(n)]
    (folder / "rt-polarity.pos").write_text("".join(f"good film {b} . \n" for b in bits), encoding="utf-8")
    (folder / "rt-polarity.neg").write_text("".join(f"bad film {b} . \n" for b in bits), encoding="utf-8")
    return folder


def test_tokenize_raw_and_ptb_text():
    expected = ["it", "'s", "a", "good", "film", ",", "is", "n't", "it", "?", "!"]
    assert tokenize("It's a GOOD film, isn't it?!") == expected
    assert tokenize("it 's a -lrb- good -rrb- film , is n't it") == tokenize("It's a (good) film, isn't it")
    assert tokenize("``co-writer/director'' ...") == ['"', "co-writer", "/", "director", '"', "..."]
    assert tokenize("   ") == []


def test_encode_decode_round_trip_and_unknown_words():
    texts = ["a good film", "a bad film , really"]
    vocab = Vocab.build([tokenize(t) for t in texts])
    tokens = tokenize("a really bad film")
    assert vocab.decode(vocab.encode(tokens)) == tokens
    assert vocab.decode(vocab.encode(["a", "terrible", "film"])) == ["a", "<unk>", "film"]
    assert vocab.encode(["terrible"]) == [1] and vocab.itos[:2] == ["<pad>", "<unk>"]
    assert vocab.decode(torch.tensor([vocab.stoi["good"], 0, 0])) == ["good"]


def test_vocab_is_deterministic_with_min_freq_and_max_size():
    lists = [["b", "a", "c"], ["c", "a", "d"], ["c"]]
    vocab = Vocab.build(lists)
    assert vocab.itos == ["<pad>", "<unk>", "c", "a", "b", "d"]  # by count, ties alphabetical
    assert Vocab.build(reversed(lists)) == vocab
    assert Vocab.build(lists, min_freq=2).itos == ["<pad>", "<unk>", "c", "a"]
    assert len(Vocab.build(lists, max_size=3)) == 3
    restored = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab and restored.encode(["d", "z"]) == [5, 1]
    with pytest.raises(zoo.ZooError, match="min_freq"):
        Vocab.build(lists, min_freq=0)


def test_pad_and_lengths():
    x = pad([[5, 6, 7], [8], [9, 10]])
    assert x.dtype == torch.int64 and x.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths(x).tolist() == [3, 1, 2]
    assert pad([[5, 6, 7], [8]], max_len=2).tolist() == [[5, 6], [8, 0]]
    assert pad([[5], [8]], max_len=4).shape == (2, 1)


def test_empty_sequence_names_the_row():
    with pytest.raises(zoo.ZooError, match="row 1 is an empty"):
        pad([[3], [], [4]])


def test_sst2_loader_on_tiny_files(tmp_path):
    folder = write_sst2(tmp_path / "sst2")
    data = zoo.datasets.load("sst2", path=tmp_path)  # the parent folder works too
    assert data.task == "classification" and "sst2" in zoo.datasets.list_datasets()
    assert data.train.x.shape == (6, 6) and data.test.x.shape == (2, 6)
    assert data.train.y.dtype == torch.int64 and data.train.y.tolist() == [1, 0, 1, 0, 1, 0]
    assert data.vocab.decode(data.test.x[0]) == ["a", "(", "<unk>", ")", "good", "film"]
    assert data.vocab.decode(data.test.x[1]) == ["<unk>", "<unk>", "is", "bad"]
    assert "-lrb-" not in data.vocab and "(" in data.vocab
    test = zoo.datasets.load("sst2", path=folder, test_split="test", max_len=3)
    assert test.test.y.tolist() == [1, 0, 1] and test.train.x.shape == (6, 3)


def test_sst2_max_train_is_a_seeded_subset_with_its_own_vocab(tmp_path):
    write_sst2(tmp_path / "sst2")
    a = zoo.datasets.load("sst2", path=tmp_path, max_train=3, seed=1)
    b = zoo.datasets.load("sst2", path=tmp_path, max_train=3, seed=1)
    assert len(a.train) == 3 and torch.equal(a.train.x, b.train.x) and a.vocab == b.vocab
    words = {t for row in a.train.x for t in a.vocab.decode(row)}
    assert set(a.vocab.itos[2:]) == words


def test_empty_texts_are_dropped_with_a_warning(tmp_path):
    folder = write_sst2(tmp_path)
    with open(folder / "train.tsv", "a", encoding="utf-8") as f:
        f.write("1\t\n0\t  \n")
    with pytest.warns(UserWarning, match="dropped 2 empty"):
        data = zoo.datasets.load("sst2", path=folder)
    assert len(data.train) == 6


def test_rt_polarity_split_is_seeded_disjoint_and_complete(tmp_path):
    write_rt(tmp_path / "rt-polarity")
    a = zoo.datasets.load("rt-polarity", path=tmp_path, test_fraction=0.25, seed=3)
    b = zoo.datasets.load("rt-polarity", path=tmp_path / "rt-polarity", test_fraction=0.25, seed=3)
    c = zoo.datasets.load("rt-polarity", path=tmp_path, test_fraction=0.25, seed=4)
    assert len(a.train) == 30 and len(a.test) == 10 and a.train.x.shape[1] == 8
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)

    def texts(data, split):
        return {" ".join(data.vocab.decode(row)) + f"|{y}" for row, y in zip(split.x, split.y.tolist(), strict=True)}

    assert not texts(a, a.train) & texts(a, a.test)
    assert len(texts(a, a.train) | texts(a, a.test)) == 40
    assert texts(a, a.test) != texts(c, c.test)
    assert sorted(a.train.y.tolist() + a.test.y.tolist()) == [0] * 20 + [1] * 20
    assert len(zoo.datasets.load("rt-polarity", path=tmp_path, max_train=7).train) == 7


@pytest.mark.parametrize("name, options, match", [
    ("sst2", {"max_train": 0}, "max_train"),
    ("sst2", {"max_train": 2.5}, "max_train"),
    ("sst2", {"test_split": "valid"}, "test_split"),
    ("rt-polarity", {"test_fraction": 1.0}, "test_fraction"),
    ("rt-polarity", {"test_fraction": 0}, "test_fraction"),
    ("rt-polarity", {"max_len": 0}, "max_len"),
])
def test_bad_options(tmp_path, name, options, match):
    write_sst2(tmp_path / "sst2"), write_rt(tmp_path / "rt-polarity")
    with pytest.raises(zoo.ZooError, match=match):
        zoo.datasets.load(name, path=tmp_path, **options)


@pytest.mark.parametrize("name", ["sst2", "rt-polarity"])
def test_missing_folder_says_where_it_looked(tmp_path, monkeypatch, name):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(zoo.ZooError, match="ZOO_DATA") as err:
        zoo.datasets.load(name, path=tmp_path / "given")
    for place in [tmp_path / "given", tmp_path / "data" / name, tmp_path / "cache" / "zoo" / name]:
        assert str(place) in str(err.value)


def test_zoo_data_environment_variable(tmp_path, monkeypatch):
    write_rt(tmp_path / "rt-polarity")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    assert len(zoo.datasets.load("rt-polarity").test) == 4


@pytest.mark.skipif(not (REAL / "sst2").is_dir(), reason="real SST-2 not in /work/shared/data")
def test_real_sst2():
    data = zoo.datasets.load("sst2", path=REAL)
    assert len(data.train) == 67349 and len(data.test) == 872
    assert set(data.train.y.unique().tolist()) == {0, 1} and set(data.test.y.unique().tolist()) == {0, 1}
    assert data.train.x.shape[1] <= 64 and len(data.vocab) <= 20000 and lengths(data.test.x).min() > 0
    assert len(zoo.datasets.load("sst2", path=REAL / "sst2", test_split="test").test) == 1821


@pytest.mark.skipif(not (REAL / "rt-polarity").is_dir(), reason="real rt-polarity not in /work/shared/data")
def test_real_rt_polarity():
    data = zoo.datasets.load("rt-polarity", path=REAL)
    assert len(data.train) + len(data.test) == 10662 and len(data.test) == 1066
    assert (data.train.y == 1).sum() + (data.test.y == 1).sum() == 5331
