"""query.py --explain DIR: one pair-explanation picture per query with its top result."""
from PIL import Image

from test_query import index_dir, run  # noqa: F401  (index_dir is a fixture)


def test_explain_writes_one_picture_per_query(assets, index_dir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "why"
    code, out, err = run(capsys, assets, index_dir, "-k", "2", "--explain", folder, *assets["paths"][:2])
    assert code == 0, err
    assert "wrote 2 pair explanation(s)" in err and out.startswith("query ")
    pictures = sorted(p.name for p in folder.iterdir())
    assert pictures == [f"000_{assets['paths'][0].stem}.png", f"001_{assets['paths'][1].stem}.png"]
    with Image.open(folder / pictures[0]) as picture:
        assert picture.size[0] > picture.size[1]


def test_explain_into_a_file_is_refused_before_any_work(assets, index_dir, tmp_path, capsys):  # noqa: F811
    taken = tmp_path / "a_file"
    taken.write_text("x")
    code, _, err = run(capsys, assets, index_dir, "--explain", taken, assets["paths"][0])
    assert code == 2 and "exists and is not a folder" in err
