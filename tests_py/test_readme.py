"""The README's example runs as written."""

import pathlib


def test_readme_example_runs():
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("## Example", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "README example", "exec"), {})


def test_readme_real_model_example_runs():
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("## Real models (transformers backend)", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(code, "README real-model example", "exec"), scope)
    assert scope["out"].shape[1] > scope["ids"].shape[1]
    assert scope["model"].config._attn_implementation == "sdpa"  # restored


def test_readme_decode_example_runs(capsys):
    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = text.split("## Decode with a KV cache", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope = {}
    exec(compile(code, "README decode example", "exec"), scope)
    assert capsys.readouterr().out.strip() == "3004 6000 (1, 8, 1, 256)"
    assert scope["out"].shape == (1, 8, 1, 128)
