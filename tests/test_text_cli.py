"""The CLI's text options: one missing-value rule for CSV and Parquet, prompts, truncate_dim, long texts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skdeep.cli import main
from skdeep.persistence import save
from skdeep.text import TextEncoder

VALUES = ["good film", None, "bad film"]


def _write(tmp_path, fmt):
    path = tmp_path / f"reviews.{fmt}"
    frame = pd.DataFrame({"review": VALUES, "id": [1, 2, 3]})
    if fmt == "csv":
        frame.to_csv(path, index=False)  # the missing review is an empty cell
        assert ",2" in path.read_text().splitlines()[2] and path.read_text().splitlines()[2].startswith(",")
    else:
        frame.to_parquet(path)  # the missing review is a null
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_empty_csv_cells_and_parquet_nulls_follow_the_same_rule(tiny_text_model, tmp_path, capsys, fmt):
    src = _write(tmp_path, fmt)
    out = tmp_path / "emb.npy"
    base = ["embed", str(src), "--column", "review", "--model", tiny_text_model, "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        main(base)
    assert info.value.code == 2 and "position 1 is None (a missing value)" in capsys.readouterr().err
    assert main([*base, "--missing", "empty"]) == 0
    expected = TextEncoder(tiny_text_model, cache=None).transform(["good film", "", "bad film"])
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    assert main([*base, "--missing", "zero"]) == 0
    zero = np.load(out)
    assert not zero[1].any()
    np.testing.assert_allclose(zero[[0, 2]], expected[[0, 2]], atol=1e-6)


def test_parquet_output_keeps_missing_texts_as_nulls(tiny_text_model, tmp_path):
    src = _write(tmp_path, "csv")
    out = tmp_path / "emb.parquet"
    argv = ["embed", str(src), "--column", "review", "--model", tiny_text_model, "--out", str(out), "--no-progress"]
    assert main([*argv, "--missing", "zero"]) == 0
    frame = pd.read_parquet(out)
    assert frame["text"].tolist()[0] == "good film" and frame["text"].isna().tolist() == [False, True, False]


def test_predict_missing_option_overrides_the_saved_rule(tiny_text_model, tmp_path, capsys):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TextEncoder(tiny_text_model, cache=None), LogisticRegression())
    pipe.fit(["good", "bad", "good film", "bad film"], [1, 0, 1, 0])
    model = tmp_path / "model.joblib"
    save(pipe, model)
    src = _write(tmp_path, "parquet")
    argv = ["predict", str(model), str(src), "--column", "review", "--allow-pickle", "--no-progress"]
    with pytest.raises(SystemExit):
        main(argv)
    assert "a missing value" in capsys.readouterr().err
    assert main([*argv, "--missing", "empty"]) == 0
    assert len(capsys.readouterr().out.split()) == 3


def test_embed_prompt_truncate_dim_and_long_text(tiny_text_model, tmp_path):
    lines = tmp_path / "t.txt"
    long = " ".join(f"word{i}" for i in range(200))
    lines.write_text(f"good film\n{long}\n")
    out = tmp_path / "e.npy"
    argv = ["embed", str(lines), "--model", tiny_text_model, "--out", str(out), "--no-progress"]
    assert main([*argv, "--prompt", "query: ", "--truncate-dim", "8", "--long-text", "chunk"]) == 0
    expected = TextEncoder(tiny_text_model, prompt="query: ", truncate_dim=8, long_text="chunk", cache=None)
    np.testing.assert_allclose(np.load(out), expected.transform(["good film", long]), atol=1e-6)
