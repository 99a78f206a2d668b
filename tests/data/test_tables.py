"""Image tables of galleries and queries: folder scans, CSV files, explicit paths, and their errors."""
import pytest
from PIL import Image

from retrieval.data import table_from_csv, table_from_folder, table_from_paths
from retrieval.errors import DataError


def _save(path, size=40, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_tables_from_folder_csv_and_paths(tmp_path):
    _save(tmp_path / "g" / "cat" / "a.jpg")
    _save(tmp_path / "g" / "cat" / "deep" / "b.png")
    _save(tmp_path / "g" / "c.jpg")
    _save(tmp_path / "g" / ".hidden" / "d.jpg")
    (tmp_path / "g" / "notes.txt").write_text("x")
    table = table_from_folder(tmp_path / "g", folder_labels=True)
    assert [p.split("/g/")[1] for p in table["path"]] == ["c.jpg", "cat/a.jpg", "cat/deep/b.png"]
    assert table["label"].tolist() == ["", "cat", "cat"]
    assert table_from_folder(tmp_path / "g")["label"].tolist() == ["", "", ""]

    (tmp_path / "list.csv").write_text("path,label\ng/cat/a.jpg,7\ng/c.jpg,\n")
    table = table_from_csv(tmp_path / "list.csv")
    assert table["path"].tolist() == [str(tmp_path / "g" / "cat" / "a.jpg"), str(tmp_path / "g" / "c.jpg")]
    assert table["label"].tolist() == ["7", ""] and table["split"].tolist() == ["", ""]
    assert table_from_paths([tmp_path / "g" / "c.jpg"])["path"].tolist() == [str(tmp_path / "g" / "c.jpg")]


@pytest.mark.parametrize("make, message", [
    (lambda t: table_from_folder(t / "nope"), "is not a folder"),
    (lambda t: table_from_folder(t), "no images under"),
    (lambda t: table_from_csv(t / "missing.csv"), "file not found"),
    (lambda t: (t / "a.csv").write_text("file,label\nx.jpg,1\n") and table_from_csv(t / "a.csv"), "no 'path' column"),
    (lambda t: (t / "a.csv").write_text("path\nx.jpg\n") and table_from_csv(t / "a.csv"), "missing, e.g. .*x.jpg"),
    (lambda t: table_from_paths([t / "ghost.jpg"]), "missing, e.g. .*ghost.jpg"),
])
def test_table_errors_name_the_file(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        make(tmp_path)
