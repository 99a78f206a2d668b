"""retrieval-verify: lists every bad file, exit 1; exit 0 when all decode."""
from __future__ import annotations

from retrieval.cli.verify import main


def test_verify_lists_bad_files(tmp_path, make_image, capsys):
    lines = ["path,label,split"]
    for cls, split in ((0, "train"), (1, "train"), (2, "test"), (3, "test")):
        for k in range(2):
            lines.append(f"{make_image(tmp_path / f'{cls}_{k}.png').name},{cls},{split}")
    csv = tmp_path / "l.csv"
    csv.write_text("\n".join(lines) + "\n")
    assert main([f"data.root={csv}", "data.name=csv", "-q"]) == 0
    (tmp_path / "1_0.png").write_bytes(b"")
    (tmp_path / "3_1.png").unlink()
    assert main([f"data.root={csv}", "data.name=csv", "-q"]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == [f"{tmp_path / '1_0.png'}\tempty file (0 bytes)",
                                    f"{tmp_path / '3_1.png'}\tfile not found"]
    assert "8 images checked" in out.err and "2 bad" in out.err


def test_verify_bad_config_exits_2(tmp_path, capsys):
    assert main([f"data.root={tmp_path / 'none'}", "data.name=cub"]) == 2
    assert "does not exist" in capsys.readouterr().err
