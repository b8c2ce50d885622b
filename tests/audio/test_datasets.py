"""Dataset readers on small fixtures written in the released layouts."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiaudio.audio.cache import ClipEntry
from aiaudio.audio.datasets import DatasetError, csv_entries, folder_entries, fsd50k_entries, fsd50k_vocabulary

# Rows in the form of the released FSD50K ground truth: quoted comma-separated multi-labels, a few single labels.
DEV_CSV = """fname,labels,mids,split
64760,"Electric_guitar,Guitar,Plucked_string_instrument,Musical_instrument,Music","/m/02sgy,/m/0342h,/m/0fx80y,/m/04szw,/m/04rlf",train
16399,"Drawer_open_or_close,Cupboard_open_or_close,Domestic_sounds_and_home_sounds","/m/0fqfqc,/m/0642b4,/t/dd00071",train
16401,"Walk_and_footsteps,Human_locomotion","/m/07pbtc8,/m/0bpl036",val
5,Bark,/m/05tny_,train
"""
EVAL_CSV = """fname,labels,mids
37199,"Music,Musical_instrument","/m/04rlf,/m/04szw"
175151,Bark,/m/05tny_
"""
# No header row; index order deliberately not the file order.
VOCABULARY_CSV = """0,Bark,/m/05tny_
1,Cupboard_open_or_close,/m/0642b4
3,Drawer_open_or_close,/m/0fqfqc
2,Domestic_sounds_and_home_sounds,/t/dd00071
4,Electric_guitar,/m/02sgy
5,Guitar,/m/0342h
6,Human_locomotion,/m/0bpl036
7,Music,/m/04rlf
8,Musical_instrument,/m/04szw
9,Plucked_string_instrument,/m/0fx80y
10,Walk_and_footsteps,/m/07pbtc8
"""


@pytest.fixture()
def fsd50k_root(tmp_path) -> Path:
    truth = tmp_path / "FSD50K.ground_truth"
    truth.mkdir()
    (truth / "dev.csv").write_text(DEV_CSV)
    (truth / "eval.csv").write_text(EVAL_CSV)
    (truth / "vocabulary.csv").write_text(VOCABULARY_CSV)
    (tmp_path / "FSD50K.dev_audio").mkdir()
    for fname in ("64760", "16399", "16401"):  # 5.wav is deliberately missing
        (tmp_path / "FSD50K.dev_audio" / f"{fname}.wav").write_bytes(b"")
    return tmp_path


def test_fsd50k_splits_and_multi_labels(fsd50k_root):
    dev_audio, eval_audio = fsd50k_root / "FSD50K.dev_audio", fsd50k_root / "FSD50K.eval_audio"
    guitar = ClipEntry(
        "64760",
        dev_audio / "64760.wav",
        ("Electric_guitar", "Guitar", "Plucked_string_instrument", "Musical_instrument", "Music"),
    )
    drawer = ClipEntry(
        "16399",
        dev_audio / "16399.wav",
        ("Drawer_open_or_close", "Cupboard_open_or_close", "Domestic_sounds_and_home_sounds"),
    )
    walk = ClipEntry("16401", dev_audio / "16401.wav", ("Walk_and_footsteps", "Human_locomotion"))
    bark = ClipEntry("5", dev_audio / "5.wav", ("Bark",))

    assert fsd50k_entries(fsd50k_root, "train") == [guitar, drawer, bark]
    assert fsd50k_entries(fsd50k_root, "val") == [walk]
    assert fsd50k_entries(fsd50k_root, "dev") == [guitar, drawer, walk, bark]
    assert fsd50k_entries(fsd50k_root, "eval") == [
        ClipEntry("37199", eval_audio / "37199.wav", ("Music", "Musical_instrument")),
        ClipEntry("175151", eval_audio / "175151.wav", ("Bark",)),
    ]
    assert not bark.path.exists()  # missing audio is the cache builder's business, not the reader's


def test_fsd50k_vocabulary_is_in_index_order(fsd50k_root):
    vocabulary = fsd50k_vocabulary(fsd50k_root)
    assert len(vocabulary) == 11
    assert vocabulary[:4] == ["Bark", "Cupboard_open_or_close", "Domestic_sounds_and_home_sounds", "Drawer_open_or_close"]


def test_fsd50k_missing_files_are_named(fsd50k_root):
    (fsd50k_root / "FSD50K.ground_truth" / "dev.csv").unlink()
    with pytest.raises(DatasetError, match=r"dev\.csv is missing"):
        fsd50k_entries(fsd50k_root, "train")
    assert len(fsd50k_entries(fsd50k_root, "eval")) == 2
    (fsd50k_root / "FSD50K.ground_truth" / "vocabulary.csv").unlink()
    with pytest.raises(DatasetError, match=r"vocabulary\.csv is missing"):
        fsd50k_entries(fsd50k_root, "eval")


def test_fsd50k_unknown_label_names_the_row(fsd50k_root):
    dev = fsd50k_root / "FSD50K.ground_truth" / "dev.csv"
    dev.write_text(dev.read_text() + '99,"Bark,Meow",/m/05tny_,train\n')
    with pytest.raises(DatasetError, match=r"dev\.csv line 6 \(fname 99\): label\(s\) 'Meow' not in the vocabulary"):
        fsd50k_entries(fsd50k_root, "dev")


def test_fsd50k_malformed_metadata(fsd50k_root):
    truth = fsd50k_root / "FSD50K.ground_truth"
    with pytest.raises(DatasetError, match="unknown FSD50K split 'test'"):
        fsd50k_entries(fsd50k_root, "test")
    (truth / "dev.csv").write_text("fname,labels,mids\n1,Bark,/m/05tny_\n")
    with pytest.raises(DatasetError, match=r"dev\.csv lacks column\(s\) split"):
        fsd50k_entries(fsd50k_root, "train")
    (truth / "dev.csv").write_text("fname,labels,mids,split\n1,Bark,/m/05tny_,test\n")
    with pytest.raises(DatasetError, match=r"line 2: split is 'test'"):
        fsd50k_entries(fsd50k_root, "dev")
    (truth / "vocabulary.csv").write_text("index,label,mid\n" + VOCABULARY_CSV)
    with pytest.raises(DatasetError, match=r"vocabulary\.csv line 1: .*no header"):
        fsd50k_vocabulary(fsd50k_root)


def test_folder_entries_label_by_parent_folder(tmp_path):
    for relative in ("top.wav", "dog/a.wav", "dog/b.FLAC", "cat/sub/c.ogg", "cat/readme.txt", "bird/d.mp3"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")

    entries = folder_entries(tmp_path)

    assert [(e.key, e.labels) for e in entries] == [
        ("cat/sub/c.ogg", ("sub",)),
        ("dog/a.wav", ("dog",)),
        ("dog/b.FLAC", ("dog",)),
        ("top.wav", ()),
    ]
    assert entries[0].path == tmp_path / "cat" / "sub" / "c.ogg"
    assert [e.key for e in folder_entries(tmp_path, extensions=(".mp3",))] == ["bird/d.mp3"]
    with pytest.raises(DatasetError, match="no audio files"):
        folder_entries(tmp_path / "cat" / "sub", extensions=(".wav",))
    with pytest.raises(DatasetError, match="does not exist"):
        folder_entries(tmp_path / "nowhere")


def test_csv_entries(tmp_path):
    listing = tmp_path / "meta" / "clips.csv"
    listing.parent.mkdir()
    listing.write_text('path,label,speaker\na/1.wav,dog,s1\nb/2.wav,"cat,pet",\n/abs/3.wav,,s2\n')

    entries = csv_entries(listing, label_columns=("label", "speaker"))
    assert entries == [
        ClipEntry("a/1.wav", tmp_path / "meta" / "a" / "1.wav", ("dog", "s1")),
        ClipEntry("b/2.wav", tmp_path / "meta" / "b" / "2.wav", ("cat,pet",)),
        ClipEntry("/abs/3.wav", Path("/abs/3.wav"), ("s2",)),
    ]
    split = csv_entries(listing, root=tmp_path, label_separator=",")
    assert split[1] == ClipEntry("b/2.wav", tmp_path / "b" / "2.wav", ("cat", "pet"))

    with pytest.raises(DatasetError, match=r"lacks column\(s\) category"):
        csv_entries(listing, label_columns=("category",))
    listing.write_text("path,label\na.wav,x\na.wav,y\n")
    with pytest.raises(DatasetError, match=r"clips\.csv line 3: path 'a\.wav' appears twice"):
        csv_entries(listing)
    with pytest.raises(DatasetError, match="is missing"):
        csv_entries(tmp_path / "absent.csv")
